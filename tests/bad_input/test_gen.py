"""Bad input to every public call of generation, Lab, Trace, compare, the viewers and the Playground:
the exception type (TypeError: wrong type, ValueError: wrong value, FileNotFoundError: missing file)
and a message naming the argument; refused before any generation runs."""

from __future__ import annotations

import json

import pytest
import torch

import mimo_lab
from mimo_lab.compare import divergence
from mimo_lab.generation import resolve_sampling
from mimo_lab.models.cards import NANO_CARD
from mimo_lab.segment import segment
from mimo_lab.trace import Trace
from mimo_lab.viz import entropy_figure, token_html
from mimo_lab.widgets import Playground, TraceViewer


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


@pytest.fixture(scope="module")
def trace(lab):
    return lab.generate("What is 17 + 28?", seed=3, max_new_tokens=8)


@pytest.fixture
def no_generation(lab, monkeypatch):
    """Fail if the model starts generating: every bad input is refused first."""

    def refuse(*args, **kwargs):
        raise AssertionError("generation started before the input was checked")

    monkeypatch.setattr(lab.model, "generate", refuse)


SAMPLING = [  # (setting, value, error, text the message must contain)
    ("temperature", "0.6", TypeError, "temperature='0.6'"), ("temperature", 0, ValueError, "temperature=0.0"),
    ("temperature", -0.5, ValueError, "temperature=-0.5"), ("temperature", float("inf"), ValueError, "temperature"),
    ("temperature", float("nan"), ValueError, "temperature"), ("temperature", True, TypeError, "temperature=True"),
    ("top_p", 0, ValueError, "top_p=0.0"), ("top_p", 1.5, ValueError, "top_p=1.5"), ("top_p", "x", TypeError, "top_p"),
    ("top_k", 0, ValueError, "top_k=0"), ("top_k", 2.5, TypeError, "top_k=2.5"), ("top_k", "5", TypeError, "top_k"),
    ("max_new_tokens", 0, ValueError, "max_new_tokens=0"), ("max_new_tokens", 10**7, ValueError, "max_new_tokens"),
    ("max_new_tokens", 3.0, TypeError, "max_new_tokens=3.0"), ("greedy", "yes", TypeError, "greedy='yes'"),
    ("greedy", 1, TypeError, "greedy=1"), ("temprature", 0.5, TypeError, "temprature"),
]


@pytest.mark.parametrize("key, value, error, text", SAMPLING, ids=[f"{k}={v!r}" for k, v, _, _ in SAMPLING])
@pytest.mark.parametrize("call", ["generate", "stream", "resample", "regenerate", "playground"])
def test_every_sampling_value_is_checked_everywhere(lab, trace, no_generation, call, key, value, error, text):
    run = {"generate": lambda kw: lab.generate("hi", **kw),
           "stream": lambda kw: lab.stream("hi", **kw),
           "resample": lambda kw: lab.resample(trace, trace.prompt_length + 1, **kw),
           "regenerate": lambda kw: lab.regenerate(trace, **kw),
           "playground": lambda kw: Playground(lab).run("hi", **kw)}[call]
    with pytest.raises(error, match=text.replace("(", r"\(").replace("[", r"\[")):
        run({key: value})


def test_resolve_sampling_checks_too():
    with pytest.raises(ValueError, match="base='greedy'"):
        resolve_sampling(NANO_CARD, base="greedy")
    with pytest.raises(TypeError, match="temperature"):
        resolve_sampling(NANO_CARD, temperature="hot")


MESSAGES = [{"role": "user", "content": "hi"}]
CASES = [
    # generate: the prompt
    ("generate('')", lambda lab, t, p: lab.generate(""), ValueError, "prompt='' is empty"),
    ("generate(None)", lambda lab, t, p: lab.generate(None), TypeError, "prompt=None"),
    ("generate(123)", lambda lab, t, p: lab.generate(123), TypeError, "prompt=123"),
    ("generate([])", lambda lab, t, p: lab.generate([]), ValueError, r"prompt=\[\] is empty"),
    ("generate(['ok', ''])", lambda lab, t, p: lab.generate(["ok", ""]), ValueError, r"prompt\[1\]=''"),
    ("generate(['ok', 5])", lambda lab, t, p: lab.generate(["ok", 5]), TypeError, r"prompt\[1\]=5"),
    ("message without content", lambda lab, t, p: lab.generate([{"role": "user"}]), ValueError,
     r"prompt\[0\].*has no 'content'"),
    ("message without role", lambda lab, t, p: lab.generate([{"content": "hi"}]), ValueError,
     r"prompt\[0\].*has no 'role'"),
    ("message content 5", lambda lab, t, p: lab.generate([{"role": "user", "content": 5}]), TypeError,
     r"prompt\[0\]\['content'\]=5"),
    ("messages all empty", lambda lab, t, p: lab.generate([{"role": "user", "content": ""}]), ValueError,
     "prompt: every message's 'content' is empty"),
    # generate: the rest
    ("seed=2**70", lambda lab, t, p: lab.generate("hi", seed=2**70), ValueError, "seed=1180591620717411303424"),
    ("seed=-1", lambda lab, t, p: lab.generate("hi", seed=-1), ValueError, "seed=-1"),
    ("seed=1.5", lambda lab, t, p: lab.generate("hi", seed=1.5), TypeError, "seed=1.5"),
    ("seed='1'", lambda lab, t, p: lab.generate("hi", seed="1"), TypeError, "seed='1'"),
    ("seed overflows for a list", lambda lab, t, p: lab.generate(["a", "b"], seed=2**63 - 1), ValueError,
     "seed=9223372036854775807 is out of range for 2 prompts"),
    ("seed list too short", lambda lab, t, p: lab.generate(["a", "b"], seed=[1]), ValueError, "seed has 1 seeds"),
    ("seed list entry -2", lambda lab, t, p: lab.generate(["a", "b"], seed=[1, -2]), ValueError, r"seed\[1\]=-2"),
    ("system=5", lambda lab, t, p: lab.generate("hi", system=5), TypeError, "system=5"),
    ("system with messages", lambda lab, t, p: lab.generate(MESSAGES, system="x"), ValueError,
     "system='x' is for a string prompt"),
    ("batch_size=0", lambda lab, t, p: lab.generate("hi", batch_size=0), ValueError, "batch_size=0"),
    ("batch_size=1.5", lambda lab, t, p: lab.generate("hi", batch_size=1.5), TypeError, "batch_size=1.5"),
    ("batch_size=None", lambda lab, t, p: lab.generate("hi", batch_size=None), TypeError, "batch_size=None"),
    ("preset='greedy'", lambda lab, t, p: lab.generate("hi", preset="greedy"), ValueError, "preset='greedy'"),
    ("mtp='yes'", lambda lab, t, p: lab.generate("hi", mtp="yes"), TypeError, "mtp='yes'"),
    ("format_prompt(5)", lambda lab, t, p: lab.format_prompt(5), TypeError, "prompt=5"),
    # stream: checked at the call, not at the first next()
    ("stream(seed=1.5)", lambda lab, t, p: lab.stream("hi", seed=1.5), TypeError, "seed=1.5"),
    ("stream(seed=-5)", lambda lab, t, p: lab.stream("hi", seed=-5), ValueError, "seed=-5"),
    ("stream('')", lambda lab, t, p: lab.stream(""), ValueError, "prompt=''"),
    ("stream(None)", lambda lab, t, p: lab.stream(None), TypeError, "prompt=None"),
    ("stream(system=5)", lambda lab, t, p: lab.stream("hi", system=5), TypeError, "system=5"),
    ("stream(mtp=2)", lambda lab, t, p: lab.stream("hi", mtp=2), TypeError, "mtp=2"),
    # resample
    ("resample('x', 3)", lambda lab, t, p: lab.resample("x", 3), TypeError, "trace='x'"),
    ("resample(seed=-3)", lambda lab, t, p: lab.resample(t, t.prompt_length, seed=-3), ValueError, "seed=-3"),
    ("resample(seed=1.5)", lambda lab, t, p: lab.resample(t, t.prompt_length, seed=1.5), TypeError, "seed=1.5"),
    ("resample position '3'", lambda lab, t, p: lab.resample(t, "3"), TypeError, "position='3'"),
    ("resample position 2.0", lambda lab, t, p: lab.resample(t, 2.0), TypeError, "position=2.0"),
    ("resample position in the prompt", lambda lab, t, p: lab.resample(t, 0), ValueError,
     "position=0 is inside the prompt"),
    ("resample position past the end", lambda lab, t, p: lab.resample(t, 10**6), ValueError,
     "position=1000000 is past the end"),
    ("resample mtp='no'", lambda lab, t, p: lab.resample(t, t.prompt_length, mtp="no"), TypeError, "mtp='no'"),
    # regenerate
    ("regenerate('str')", lambda lab, t, p: lab.regenerate("str"), TypeError, "trace='str'"),
    ("regenerate(None)", lambda lab, t, p: lab.regenerate(None), TypeError, "trace=None"),
    ("regenerate another model's trace", lambda lab, t, p: lab.regenerate(Trace(**{**t.__dict__, "model_name": "m"})),
     ValueError, "came from 'm'"),
    # divergence, as a function and as a method
    ("divergence(t, 'x')", lambda lab, t, p: divergence(t, "x"), TypeError, "b='x'"),
    ("divergence('x', t)", lambda lab, t, p: divergence("x", t), TypeError, "a='x'"),
    ("t.divergence('x')", lambda lab, t, p: t.divergence("x"), TypeError, "other='x'"),
    ("t.divergence(other prompt)", lambda lab, t, p: t.divergence(Trace(**{**t.__dict__, "prompt_text": "2 + 2?"})),
     ValueError, "self and other answer different prompts"),
    # Trace methods
    ("forking_tokens('a')", lambda lab, t, p: t.forking_tokens("a"), TypeError, "quantile='a'"),
    ("forking_tokens(1.5)", lambda lab, t, p: t.forking_tokens(1.5), ValueError, "quantile=1.5"),
    ("token_at(-1)", lambda lab, t, p: t.token_at(-1), ValueError, "char_offset=-1"),
    ("token_at('a')", lambda lab, t, p: t.token_at("a"), TypeError, "char_offset='a'"),
    ("index_of(0)", lambda lab, t, p: t.index_of(0), ValueError, "position=0 is not a generated token"),
    ("segments(kind='word')", lambda lab, t, p: t.segments("word"), ValueError, "kind='word'"),
    ("segments(labeller=5)", lambda lab, t, p: t.segments(labeller=5), TypeError, "labeller=5"),
    ("segment(5)", lambda lab, t, p: segment(5), TypeError, "text=5"),
    ("token_view('prob')", lambda lab, t, p: t.token_view("prob"), ValueError, "color_by 'prob'"),
    ("plot(kind='x')", lambda lab, t, p: t.plot(kind="x"), ValueError, "kind='x'"),
    ("entropy_figure(fork_quantile=2)", lambda lab, t, p: entropy_figure(t, fork_quantile=2), ValueError,
     "quantile=2"),
    ("token_html(color_by='p')", lambda lab, t, p: token_html(t, color_by="p"), ValueError, "color_by 'p'"),
    ("divergence steps(kind=1)", lambda lab, t, p: t.divergence(t).steps(kind=1), TypeError, "kind=1"),
    # Trace.load: missing and corrupt files
    ("Trace.load(missing)", lambda lab, t, p: Trace.load(p / "nothing"), FileNotFoundError, "not a saved Trace"),
    # the viewers
    ("TraceViewer('x')", lambda lab, t, p: TraceViewer("x"), TypeError, "trace=str"),
    ("TraceViewer(color_by='prob')", lambda lab, t, p: TraceViewer(t, color_by="prob"), ValueError, "color_by='prob'"),
    ("TraceViewer(lab=5)", lambda lab, t, p: TraceViewer(t, lab=5), TypeError, "lab=int"),
    ("TraceViewer.select(0)", lambda lab, t, p: TraceViewer(t).select(0), ValueError, "position=0"),
    ("TraceViewer.select('1')", lambda lab, t, p: TraceViewer(t).select("1"), TypeError, "position='1'"),
    ("Playground('x')", lambda lab, t, p: Playground("x"), TypeError, "lab=str"),
    ("Playground.run('')", lambda lab, t, p: Playground(lab).run(""), ValueError, "prompt=''"),
    ("Playground.run(5)", lambda lab, t, p: Playground(lab).run(5), TypeError, "prompt=5"),
    ("Playground.run(seed=-1)", lambda lab, t, p: Playground(lab).run("hi", seed=-1), ValueError, "seed=-1"),
    ("Playground.run(system=5)", lambda lab, t, p: Playground(lab).run("hi", system=5), TypeError, "system=5"),
    ("Playground knob beyond its slider", lambda lab, t, p: Playground(lab)._set("hi", None, {"temperature": 5.0}),
     ValueError, "temperature=5.0 is outside the temperature knob's range"),
    ("Playground knob unknown", lambda lab, t, p: Playground(lab)._set("hi", None, {"temp": 1.0}), TypeError, "temp"),
    # load
    ("load(threads=0)", lambda lab, t, p: mimo_lab.load(threads=0), ValueError, "threads=0"),
    ("load(weights='no')", lambda lab, t, p: mimo_lab.load(weights="no"), TypeError, "weights='no'"),
    ("load(5)", lambda lab, t, p: mimo_lab.load(5), TypeError, "name_or_path=5"),
    ("load(missing folder)", lambda lab, t, p: mimo_lab.load(str(p / "no-such-model")), FileNotFoundError,
     "no-such-model"),
]


@pytest.mark.parametrize("name, call, error, text", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_argument(lab, trace, tmp_path, no_generation, name, call, error, text):
    with pytest.raises(error, match=text):
        call(lab, trace, tmp_path)


def test_resample_past_the_end_names_the_positions(lab, trace, no_generation):
    end = trace.prompt_length + len(trace)
    with pytest.raises(ValueError, match=f"position={end + 1} is past the end.*{trace.prompt_length} to {end} is"):
        lab.resample(trace, end + 1)


def test_a_corrupt_config_json_names_the_file(mimo_checkpoint, tmp_path):
    import shutil

    folder = shutil.copytree(mimo_checkpoint, tmp_path / "broken")
    (folder / "config.json").write_text("{'model_type': mimo")
    with pytest.raises(ValueError, match="config.json' is corrupt: it is not JSON"):
        mimo_lab.load(folder)


def test_trace_load_of_a_newer_or_corrupt_file(trace, tmp_path):
    folder = trace.save(tmp_path / "t")
    record = json.loads((folder / "trace.json").read_text())
    (folder / "trace.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(ValueError, match="has trace format 99, newer than"):
        Trace.load(folder)
    (folder / "trace.json").write_text(json.dumps({**record, "finish_reason": None}))
    with pytest.raises(ValueError, match="field 'finish_reason' is corrupt"):
        Trace.load(folder)
    (folder / "trace.json").write_text(json.dumps(record))
    torch.save({"x": 1}, folder / "tensors.safetensors")  # a pickle, not safetensors
    with pytest.raises(ValueError, match="tensors.safetensors is corrupt"):
        Trace.load(folder)


@pytest.mark.parametrize("argv, text", [(["demo", "--per-level", "0"], "--per-level 0"),
                                        (["demo", "--threads", "0"], "threads=0")])
def test_cli_demo_names_the_bad_option(argv, text, capsys, monkeypatch):
    from mimo_lab import cli
    from mimo_lab.models.mimo import MiMoForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("weights started loading before the option was checked")

    monkeypatch.setattr(MiMoForCausalLM, "from_pretrained", refuse)
    assert cli.main(argv) == 2
    assert text in capsys.readouterr().err

"""MiMo-nano training: a few steps lower the loss; a killed run resumes to the same weights."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from mimo_lab.cli import main
from mimo_lab.models.mimo import MiMoForCausalLM
from mimo_lab.nano import tasks
from mimo_lab.nano import train as train_module
from mimo_lab.nano.train import TrainSettings, batch_for_step, losses, make_tokenizer, model_config, train

TINY = TrainSettings(steps=12, batch_size=8, pool_batches=2, warmup=2, lr=3e-3, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tokenizer_corpus=300,
                     save_every=5)


def test_a_few_steps_lower_the_loss(tmp_path):
    out = train(tmp_path / "run", TINY, progress=False)
    tokenizer = make_tokenizer(TINY)
    torch.manual_seed(TINY.seed)
    fresh = MiMoForCausalLM(model_config(TINY, tokenizer))  # the same init train() starts from
    trained = MiMoForCausalLM.from_pretrained(out)
    batch = batch_for_step(1000, TINY, tokenizer)  # a batch never trained on
    with torch.no_grad():
        before = sum(losses(fresh, *batch))
        after = sum(losses(trained, *batch))
    assert after < before - 0.5, (before, after)
    log = (out / "loss_log.jsonl").read_text().splitlines()
    assert len(log) >= 2 and '"mtp_loss"' in log[0]


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    straight = train(tmp_path / "straight", TINY, progress=False)

    real = train_module.batch_for_step
    calls = {"n": 0}

    def dies_at_step_11(step, *args):
        if step == 11 and calls["n"] == 0:   # after step 10 was logged; the last saved state is at step 10
            calls["n"] += 1
            raise KeyboardInterrupt  # stands in for a kill
        return real(step, *args)

    monkeypatch.setattr(train_module, "batch_for_step", dies_at_step_11)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", TINY, progress=False)
    assert (tmp_path / "resumed" / "resume.safetensors").exists()  # state at step 10 kept
    resumed = train(tmp_path / "resumed", TINY, progress=False)
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    # the loss log reads as one run: the same steps once each (step 10, logged before the kill, is not
    # repeated), the same losses, and training seconds that keep counting across the resume
    rows = [json.loads(line) for line in (resumed / "loss_log.jsonl").read_text().splitlines()]
    straight_rows = [json.loads(line) for line in (straight / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows] == [0, 10, 11]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in straight_rows], abs=1e-4)
    seconds = [r["seconds"] for r in rows]
    assert seconds == sorted(seconds)


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    train(tmp_path / "run", replace(TINY, steps=2), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(tmp_path / "run", replace(TINY, steps=3), progress=False)


def test_a_trained_folder_loads_with_the_nano_card(tmp_path):
    import mimo_lab
    from mimo_lab.models.cards import NANO_CARD

    out = train(tmp_path / "run", replace(TINY, steps=2), progress=False)
    lab = mimo_lab.load(out)
    assert lab.card is NANO_CARD
    sampling = lab._sampling({})
    assert sampling.greedy is True and sampling.max_new_tokens == NANO_CARD.max_new_tokens == 768


def test_a_steps_batch_does_not_depend_on_the_steps_drawn_before():
    tokenizer = make_tokenizer(TINY)
    first = batch_for_step(3, TINY, tokenizer)   # pool 1 (steps 2-3)
    batch_for_step(4, TINY, tokenizer)           # another pool is drawn and kept
    again = batch_for_step(3, TINY, tokenizer)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], batch_for_step(2, TINY, tokenizer)[0])  # the pool's other batch
    # the same pool under another tokenizer is encoded again, not taken from the kept one
    other = batch_for_step(3, TINY, make_tokenizer(replace(TINY, tokenizer_corpus=200)))[0]
    assert other.shape != first[0].shape or not torch.equal(other, first[0])
    assert torch.equal(batch_for_step(3, TINY, tokenizer)[0], first[0])


def test_bf16_runs_the_forward_in_bfloat16_and_says_so_in_the_card(tmp_path):
    short = replace(TINY, steps=3)
    runs = {bf16: train(tmp_path / f"bf16_{bf16}", replace(short, bf16=bf16), progress=False) for bf16 in (True, False)}
    first = {bf16: json.loads((out / "loss_log.jsonl").read_text().splitlines()[0])["loss"]
             for bf16, out in runs.items()}
    # the same init and batch: bfloat16 matmuls move the first loss a little, not a lot
    assert first[True] != first[False] and abs(first[True] - first[False]) < 0.05 * first[False], first
    assert "bfloat16 under autocast" in (runs[True] / "README.md").read_text()
    assert "bfloat16" not in (runs[False] / "README.md").read_text()


@pytest.mark.parametrize("change, named", [
    ({"steps": 0}, "steps=0"), ({"batch_size": 2.5}, "batch_size=2.5"), ({"warmup": -1}, "warmup=-1"),
    ({"seed": "0"}, "seed='0'"), ({"bf16": "no"}, "bf16='no'"), ({"min_lr": 0.1}, "min_lr=0.1"),
    ({"num_key_value_heads": 3}, "num_key_value_heads=3"),
])
def test_bad_settings_fail_when_made(change, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        replace(TINY, **change)


def test_cli_rejects_zero_steps_before_writing_anything(tmp_path, capsys):
    assert main(["nano", "train", "--out", str(tmp_path / "run"), "--steps", "0"]) == 2
    assert "TrainSettings.steps=0: a whole number of at least 1 is accepted" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, named", [
    ({"traces": "v3"}, "traces='v3': one of 'v1', 'v2' is accepted"),
    ({"mtp_zero_first_embedding": 1}, "mtp_zero_first_embedding=1: True or False is accepted"),
])
def test_bad_trace_settings_fail_when_made(change, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        replace(TINY, **change)


def test_the_shipped_run_keeps_v1_traces_and_the_unmasked_mtp():
    assert TrainSettings().traces == "v1" and TrainSettings().mtp_zero_first_embedding is False


def test_a_v2_run_trains_on_v2_traces_with_the_zero_first_mtp_and_records_both(tmp_path):
    settings = replace(TINY, steps=20, traces="v2", mtp_zero_first_embedding=True)
    out = train(tmp_path / "run", settings, progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["mtp_zero_first_embedding"] is True
    recorded = json.loads((out / "train_settings.json").read_text())
    assert recorded["traces"] == "v2" and recorded["mtp_zero_first_embedding"] is True
    card = (out / "README.md").read_text()
    assert "mimo-lab nano train --out DIR --traces v2 " in card and "trace style v2" in card
    assert "MTP convention at slot 0: token embedding zeroed" in card
    # the batches are v2 traces, and the MTP loss is the zero-first one
    tokenizer = make_tokenizer(settings)
    ids, _, mask = batch_for_step(0, settings, tokenizer)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert any(opening in text for text in texts for opening in tasks.V2_OPENINGS.values())
    model = MiMoForCausalLM.from_pretrained(out)
    assert model.config.mtp_zero_first_embedding is True
    import mimo_lab  # the lab's MTP lens follows the folder's convention too (the card leaves it to the config)

    assert mimo_lab.load(out).mtp_lens("What is 1 + 2?").zero_first_embedding is True
    with torch.no_grad():
        _, mtp = losses(model, ids, None, mask)
        _, zeroed = model.forward_with_mtp(ids, zero_first_embedding=True)
        _, unmasked = model.forward_with_mtp(ids, zero_first_embedding=False)
    assert not torch.equal(zeroed, unmasked)
    vocab = zeroed.shape[-1]
    expected = torch.nn.functional.cross_entropy(zeroed[:, :-1].reshape(-1, vocab), ids[:, 2:].reshape(-1),
                                                 reduction="none")
    expected = (expected * mask[:, 2:].reshape(-1)).sum() / mask[:, 2:].sum()
    torch.testing.assert_close(mtp, expected)


def test_a_folder_from_before_the_trace_settings_resumes(tmp_path):
    out = train(tmp_path / "run", replace(TINY, steps=2), progress=False)
    recorded = json.loads((out / "train_settings.json").read_text())
    for key in ("traces", "mtp_zero_first_embedding"):
        del recorded[key]
    (out / "train_settings.json").write_text(json.dumps(recorded))
    train(out, replace(TINY, steps=2), progress=False)  # the same run: its settings had the defaults
    with pytest.raises(ValueError, match="other settings"):
        train(out, replace(TINY, steps=2, traces="v2"), progress=False)


@pytest.mark.parametrize("argv, traces, zero_first", [
    ([], "v1", False), (["--traces", "v2"], "v2", True), (["--traces", "v2", "--no-mtp-zero-first-embedding"], "v2",
                                                            False),
    (["--mtp-zero-first-embedding"], "v1", True),
])
def test_cli_trace_options(tmp_path, monkeypatch, argv, traces, zero_first):
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda out, settings: seen.setdefault("settings", settings) and out)
    assert main(["nano", "train", "--out", str(tmp_path / "run"), *argv]) == 0
    assert seen["settings"].traces == traces and seen["settings"].mtp_zero_first_embedding is zero_first

"""load() and Lab: the hub layout, devices and dtypes, and every bad input named before heavy work."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mimo_lab
from mimo_lab import lab as lab_module
from mimo_lab.models.mimo import MiMoForCausalLM


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if weights start loading: bad input must be refused before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights started loading before the input was checked")

    monkeypatch.setattr(MiMoForCausalLM, "from_pretrained", refuse)


def test_load_fixture_checkpoint(mimo_checkpoint, remote_code_marker):
    lab = mimo_lab.load(mimo_checkpoint)
    assert isinstance(lab.model, MiMoForCausalLM)
    assert lab.model.dtype == torch.float32  # CPU default, though config.json says bfloat16
    assert lab.device.type == "cpu"
    assert lab.model.config._attn_implementation == "sdpa"
    assert lab.card.has_mtp and lab.card.system_prompt == ""
    assert lab.has_mtp
    assert not remote_code_marker.exists()


def test_load_dtype_and_device_choices(mimo_checkpoint):
    lab = mimo_lab.load(mimo_checkpoint, device="cpu", dtype="bfloat16")
    assert lab.model.dtype == torch.bfloat16
    assert lab_module.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert lab_module.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert lab_module.resolve_dtype(torch.float16, torch.device("cpu")) == torch.float16


def test_nnsight_wraps_the_loaded_module(mimo_checkpoint, recwarn):
    import nnsight

    lab = mimo_lab.load(mimo_checkpoint)
    ids = lab.tokenizer("What is 1 + 1?", return_tensors="pt")["input_ids"]
    with lab.nn.trace(ids):
        hidden = lab.nn.model.layers[1].output.save()
    assert lab.nn._module is lab.model  # no second load
    with torch.no_grad():
        expected = {}
        handle = lab.model.model.layers[1].register_forward_hook(lambda _m, _a, out: expected.setdefault("h", out))
        lab.model(ids)
        handle.remove()
    torch.testing.assert_close(hidden, expected["h"])
    deprecations = [w for w in recwarn if "Deprecat" in type(w.message).__name__]
    assert not deprecations, [str(w.message) for w in deprecations]
    assert nnsight.__version__ >= "0.8"


def test_folder_without_config(tmp_path, no_heavy_work):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        mimo_lab.load(tmp_path / "empty")


def test_hub_id_not_cached_while_offline(tmp_path, monkeypatch, no_heavy_work):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="not in the local Hugging Face cache and the hub is offline"):
        mimo_lab.load("XiaomiMiMo/MiMo-7B-RL")


def test_hub_id_loads_from_local_cache_offline(mimo_checkpoint, tmp_path, monkeypatch):
    # Lay the fixture out as the hub cache does: models--owner--name/snapshots/<sha>/ + refs/main.
    cache = tmp_path / "cache"
    repo = cache / "models--XiaomiMiMo--MiMo-7B-RL"
    sha = "0" * 40
    shutil.copytree(mimo_checkpoint, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    lab = mimo_lab.load("XiaomiMiMo/MiMo-7B-RL")
    assert lab.card.name == "XiaomiMiMo/MiMo-7B-RL"  # the known card, not a generic one
    assert lab.card.published["AIME 2024"] == 68.2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_or_missing_shard(mimo_checkpoint, tmp_path, no_heavy_work, damage):
    broken = shutil.copytree(mimo_checkpoint, tmp_path / "broken")
    shard = broken / "model-00002-of-00002.safetensors"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
        expected = "truncated or corrupt"
    elif damage == "garbage":
        shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\x00" * 64)
        expected = "truncated or corrupt"
    else:
        shard.unlink()
        expected = "is missing"
    with pytest.raises(ValueError, match=expected) as err:
        mimo_lab.load(broken)
    assert "model-00002-of-00002.safetensors" in str(err.value)


def test_unsupported_model_type(mimo_checkpoint, tmp_path, no_heavy_work):
    odd = shutil.copytree(mimo_checkpoint, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "totally_custom_lm"
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'totally_custom_lm'"):
        mimo_lab.load(odd)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "mps:0"])
def test_unknown_device(device, no_heavy_work):
    with pytest.raises(ValueError, match=f"unknown device '{device}'"):
        mimo_lab.load(device=device)


@pytest.mark.parametrize("dtype", ["int8", "float64", "half-ish"])
def test_unknown_dtype(dtype, no_heavy_work):
    with pytest.raises(ValueError, match=f"unknown dtype '{dtype}'"):
        mimo_lab.load(dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu(device, no_heavy_work):
    with pytest.raises(ValueError, match="has no CUDA GPU"):
        mimo_lab.load(device=device)


def test_a_file_or_a_malformed_name(tmp_path, no_heavy_work):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        mimo_lab.load(tmp_path / "weights.bin")
    with pytest.raises(ValueError, match="neither an existing folder nor a hub id"):
        mimo_lab.load("no/such/thing/here")


def test_unknown_model_gets_a_card_from_its_files(mimo_checkpoint, tmp_path):
    renamed = shutil.copytree(mimo_checkpoint, tmp_path / "my-experiment")
    (renamed / "generation_config.json").write_text(json.dumps({"temperature": 0.8, "top_p": 0.9}))
    lab = mimo_lab.load(renamed)
    assert lab.card.name.endswith("my-experiment")
    assert (lab.card.temperature, lab.card.top_p) == (0.8, 0.9)
    assert lab.card.think_start == "<think>" and lab.card.has_mtp
    assert lab.card.context_length == 32768


# ---------------------------------------------------------------------------- CPU threads (issue 15, C17)


@pytest.fixture
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("MIMO_LAB_THREADS", raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_threads_one_for_a_small_model_on_the_cpu_and_overridable(mimo_checkpoint, restore_threads):
    torch.set_num_threads(2)
    small = mimo_lab.load(mimo_checkpoint, device="cpu")
    assert small.threads == 1 and torch.get_num_threads() == 1  # far under 50M parameters
    assert "threads=1" in repr(small)
    two = mimo_lab.load(mimo_checkpoint, device="cpu", threads=2)
    assert two.threads == 2 and torch.get_num_threads() == 2 and "threads=2" in repr(two)
    restore_threads.setenv("MIMO_LAB_THREADS", "3")
    assert mimo_lab.load(mimo_checkpoint, device="cpu").threads == 3 and torch.get_num_threads() == 3
    assert mimo_lab.load(mimo_checkpoint, device="cpu", threads=1).threads == 1  # the argument wins


def test_threads_of_a_large_model_are_left_alone(restore_threads):
    big = torch.nn.Linear(8000, 7000)  # 56M parameters
    torch.set_num_threads(3)  # the user's own setting: a large model keeps it
    assert lab_module.choose_threads(None, big, torch.device("cpu")) == 3
    assert lab_module.choose_threads(None, torch.nn.Linear(10, 10), torch.device("cuda")) == 3
    assert lab_module.choose_threads(None, torch.nn.Linear(10, 10), torch.device("cpu")) == 1
    restore_threads.setattr(lab_module, "_threads_set_by_load", 3)  # ... unless a small model's load() set it
    assert lab_module.choose_threads(None, big, torch.device("cpu")) == lab_module._TORCH_DEFAULT_THREADS


def test_loading_a_large_model_after_nano_restores_the_threads(mimo_checkpoint, restore_threads):
    torch.set_num_threads(2)
    assert mimo_lab.load(mimo_checkpoint, device="cpu").threads == 1
    restore_threads.setattr(lab_module, "SMALL_MODEL_PARAMS", 1000)  # now the same checkpoint counts as large
    assert mimo_lab.load(mimo_checkpoint, device="cpu").threads == lab_module._TORCH_DEFAULT_THREADS
    torch.set_num_threads(2)
    assert mimo_lab.load(mimo_checkpoint, device="cpu").threads == 2  # the user's setting stays
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("threads, error", [(0, ValueError), (1.5, TypeError), ("4", TypeError)])
def test_bad_threads_are_refused_before_loading(threads, error, no_heavy_work):
    with pytest.raises(error, match="threads"):
        mimo_lab.load(threads=threads)


def test_bad_mimo_lab_threads_is_refused(mimo_checkpoint, restore_threads, no_heavy_work):
    restore_threads.setenv("MIMO_LAB_THREADS", "many")
    with pytest.raises(ValueError, match="MIMO_LAB_THREADS='many'"):
        mimo_lab.load(mimo_checkpoint)


def test_lab_methods_are_thin_delegates():
    """Issue 15 C13: lab.py is the index of what a Lab can do; each method that runs the model hands
    over to the module implementing it in a few lines (no god object)."""
    import ast
    import inspect
    import textwrap

    from mimo_lab.lab import Lab

    runs_the_model = {"generate", "stream", "regenerate", "resample", "capture", "logit_lens", "mtp_lens",
                      "attention", "attention_between", "receiver_heads", "activation_patching",
                      "steering_vector", "behaviour_vector", "steer", "suppress_sentence", "suppression_matrix",
                      "bench"}
    public = {name for name, fn in inspect.getmembers(Lab, inspect.isfunction) if not name.startswith("_")}
    assert runs_the_model <= public
    for name in sorted(runs_the_model):
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(Lab, name)))).body[0]
        body = [node for node in tree.body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]  # docstring
        statements = sum(1 for node in body for _ in ast.walk(node) if isinstance(_, ast.stmt))
        assert statements <= 4, f"Lab.{name} has {statements} statements: move the work into its module"

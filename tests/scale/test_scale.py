"""Scale paths testable on a CPU: backend selection and errors, vLLM output conversion, device-map
planning, a model sharded with accelerate hooks, and nnsight's offline simulation of remote runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from suite_files import write_all

import mimo_lab
from mimo_lab.bench import run as bench_run
from mimo_lab.bench.vllm_backend import TOP_K, traces_from_outputs
from mimo_lab.generation import resolve_sampling
from mimo_lab.lab import plan_device_map
from mimo_lab.models.mimo import MiMoConfig
from mimo_lab.probe.lens import logit_lens

TEXT = "What is 128 + 367? I add the numbers column by column. Wait, check it. The answer is 495."
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab(mimo_checkpoint):
    return mimo_lab.load(mimo_checkpoint)


def test_vllm_backend_without_vllm_says_how_to_install(lab, tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    files = write_all(tmp_path / "s")
    with pytest.raises(ImportError, match=r"pip install 'mimo_lab\[vllm\]'"):
        bench_run(lab, str(files["aime24"]), backend="vllm", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    out = subprocess.run([sys.executable, "-m", "mimo_lab.cli", "bench", "--backend", "vllm", "--suite",
                          str(files["aime24"]), "--out", str(tmp_path / "r2")], capture_output=True, text=True)
    assert out.returncode == 2 and "pip install 'mimo_lab[vllm]'" in out.stderr


def test_vllm_outputs_become_traces(lab):
    tok = lab.tokenizer
    ids = tok("<think>\nok\n</think>\n\n\\boxed{7}", add_special_tokens=False)["input_ids"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def step(token_id):
        others = {token_id: SimpleNamespace(logprob=-0.1)}
        others.update({(token_id + j) % 300: SimpleNamespace(logprob=-2.0 - j) for j in range(1, TOP_K)})
        return others

    completion = SimpleNamespace(token_ids=ids + [eos], logprobs=[step(t) for t in ids + [eos]],
                                 finish_reason="stop")
    output = SimpleNamespace(outputs=[completion], prompt_token_ids=[1, 2, 3])
    sampling = resolve_sampling(lab.card, max_new_tokens=50)
    (trace,) = traces_from_outputs([output], ["PROMPT"], ["What?"], [5], lab, sampling)
    assert trace.token_ids.tolist() == ids and trace.final_answer == "7" and trace.finish_reason == "stop"
    assert trace.logprobs.tolist() == pytest.approx([-0.1] * len(ids))
    assert trace.top_ids.shape == (len(ids), TOP_K) and int(trace.top_ids[0, 0]) == ids[0]
    assert math.isnan(float(trace.entropies[0])) and trace.meta["backend"] == "vllm" and trace.seed == 5


def test_device_map_planning_on_cpu(mimo_checkpoint):
    config = MiMoConfig.from_pretrained(mimo_checkpoint)
    layer_bytes = 4 * sum(p.numel() for p in mimo_lab.load(mimo_checkpoint).model.model.layers[0].parameters())
    plan = plan_device_map(config, max_memory={0: int(2.2 * layer_bytes), 1: 10**9, "cpu": 10**9},
                           dtype=torch.float32)
    assert set(plan.values()) >= {0, 1}
    for i in range(config.num_hidden_layers):  # never a layer split over devices
        assert f"model.layers.{i}" in plan or "model.layers" in plan or "model" in plan
    assert not any(key.startswith("model.layers.0.") for key in plan)


def test_sharded_model_with_offloaded_layer_gives_the_same_probes(mimo_checkpoint, lab):
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.layers.2": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "model.mtp_layers": "cpu",
                  "lm_head": "cpu"}
    sharded = mimo_lab.load(mimo_checkpoint, device_map=device_map)
    assert hasattr(sharded.model.model.layers[1], "_hf_hook")  # accelerate moves its weights in and out
    assert sharded.model.dtype == torch.float32  # a CPU/disk map keeps the CPU default
    torch.testing.assert_close(sharded.capture(TEXT, sites="resid")["resid"], lab.capture(TEXT, sites="resid")["resid"],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logit_lens(sharded, TEXT, k=3).top_probs, logit_lens(lab, TEXT, k=3).top_probs,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sharded.attention(TEXT, 1).patterns, lab.attention(TEXT, 1).patterns, atol=1e-6,
                               rtol=0)
    a = sharded.generate("What is 1 + 2?", greedy=True, max_new_tokens=10)
    b = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=10)
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.mtp["pred_prob"], b.mtp["pred_prob"], atol=1e-5, rtol=1e-4, equal_nan=True)
    with pytest.raises(ValueError, match="not both"):
        mimo_lab.load(mimo_checkpoint, device="cpu", device_map=device_map)


def test_remote_round_trip_simulated_offline(mimo_checkpoint, lab):
    remote = mimo_lab.load(mimo_checkpoint, remote="local")
    assert remote.trace_options == {"remote": "local"}
    torch.testing.assert_close(remote.capture(TEXT, sites=("resid", "mlp_out"), layers=[0, 2])["mlp_out"],
                               lab.capture(TEXT, sites=("resid", "mlp_out"), layers=[0, 2])["mlp_out"])
    torch.testing.assert_close(remote.attention(TEXT, 2).patterns, lab.attention(TEXT, 2).patterns)
    a = remote.generate("What is 1 + 2?", greedy=True, max_new_tokens=8)
    b = lab.generate("What is 1 + 2?", greedy=True, max_new_tokens=8)
    assert torch.equal(a.token_ids, b.token_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
    assert a.meta["analytics"] == "second pass"
    with pytest.raises(ValueError, match="chunk_size needs a local model"):
        remote.capture(TEXT, chunk_size=4)
    with pytest.raises(ValueError, match="remote 'ndif'"):
        mimo_lab.load(mimo_checkpoint, remote="ndif")


def test_weights_false_and_remote_true_refuse_local_work(mimo_checkpoint):
    light = mimo_lab.load(mimo_checkpoint, weights=False)
    assert light.model.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    with pytest.raises(ValueError, match="needs the weights on this machine"):
        light.generate("hi")


def test_gpu_script_exits_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would measure for real")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "no CUDA GPU" in out.stdout

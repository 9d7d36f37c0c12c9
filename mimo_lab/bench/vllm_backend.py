"""vLLM generation for benchmark runs (extra `vllm`; CUDA GPUs). Imported only when asked for.

One `vllm.LLM` per Lab, tensor-parallel over every visible GPU; each sample gets its own
`SamplingParams(seed=...)` (the run's per-sample seed) and the top-5 log-probs per token, from
which the Trace is built. vLLM returns only the top-k log-probs, so a Trace made here has no
entropy (NaN). For MiMo checkpoints the MTP layer drafts one token ahead (speculative decoding)
where the installed vLLM knows the `mimo_mtp` method.
"""

from __future__ import annotations

import math
import warnings

import torch

from mimo_lab.generation import Sampling, TokenDecoder
from mimo_lab.trace import Trace

TOP_K = 5
_ENGINES: dict[int, object] = {}


def require_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError("the vllm backend needs vLLM: `pip install 'mimo_lab[vllm]'` on a machine with a CUDA "
                          "GPU, or use backend='transformers'") from err
    return vllm


def sampling_params(vllm, sampling: Sampling, seed: int):
    return vllm.SamplingParams(
        temperature=0.0 if sampling.greedy else sampling.temperature, top_p=1.0 if sampling.greedy else sampling.top_p,
        top_k=-1 if sampling.greedy or not sampling.top_k else sampling.top_k, max_tokens=sampling.max_new_tokens,
        seed=seed, logprobs=TOP_K)


def engine(lab):
    """The vLLM engine for a Lab (built once): tensor parallel over all GPUs, MTP drafting for MiMo."""
    vllm = require_vllm()
    if id(lab) in _ENGINES:
        return _ENGINES[id(lab)]
    if not torch.cuda.is_available():
        raise ValueError("the vllm backend needs a CUDA GPU; on this machine use backend='transformers'")
    path = lab.model.config._name_or_path or lab.name
    options = dict(model=path, tensor_parallel_size=torch.cuda.device_count(), dtype="bfloat16",
                   max_model_len=lab.card.context_length, seed=0)
    if lab.card.has_mtp and lab.card.family == "mimo":
        try:
            llm = vllm.LLM(**options, speculative_config={"method": "mimo_mtp", "num_speculative_tokens": 1})
        except Exception as err:  # noqa: BLE001 - an older vLLM: run without MTP drafting
            warnings.warn(f"vLLM could not use MiMo's MTP layer for speculative decoding ({err}); running without",
                          stacklevel=2)
            llm = vllm.LLM(**options)
    else:
        llm = vllm.LLM(**options)
    _ENGINES[id(lab)] = llm
    return llm


def traces_from_outputs(outputs, prompt_texts, prompts, seeds, lab, sampling: Sampling) -> list[Trace]:
    """Traces from vLLM RequestOutputs (token ids, per-token top-k log-probs, finish reason)."""
    decoder = TokenDecoder(lab.tokenizer)
    traces = []
    for out, text, prompt, seed in zip(outputs, prompt_texts, prompts, seeds, strict=True):
        completion = out.outputs[0]
        ids = list(completion.token_ids)
        eos = set(lab.tokenizer.all_special_ids)
        if ids and ids[-1] in eos:
            ids = ids[:-1]
        steps = list(completion.logprobs or [])[: len(ids)]
        chosen, top_ids, top_lps = [], [], []
        for token_id, step in zip(ids, steps, strict=False):
            chosen.append(step[token_id].logprob if token_id in step else math.nan)
            ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:TOP_K]
            ranked += [(-1, type("Missing", (), {"logprob": -math.inf})())] * (TOP_K - len(ranked))
            top_ids.append([i for i, _ in ranked])
            top_lps.append([lp.logprob for _, lp in ranked])
        decoded, spans = decoder.decode_with_spans(ids)
        n = len(ids)
        finish = {"stop": "stop", "length": "length"}.get(str(completion.finish_reason), "stop")
        traces.append(Trace(
            prompt=prompt, text=decoded, token_ids=torch.tensor(ids, dtype=torch.long),
            token_texts=[decoded[s:e] for s, e in spans], spans=torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
            logprobs=torch.tensor(chosen, dtype=torch.float32).reshape(n),
            entropies=torch.full((n,), math.nan), model_entropies=torch.full((n,), math.nan),
            top_ids=torch.tensor(top_ids, dtype=torch.long).reshape(n, TOP_K),
            top_logprobs=torch.tensor(top_lps, dtype=torch.float32).reshape(n, TOP_K),
            top_texts=[[decoder.token_text(i) if i >= 0 else "" for i in row] for row in top_ids],
            finish_reason=finish, prompt_text=text,
            prompt_ids=torch.tensor(list(out.prompt_token_ids or []), dtype=torch.long), model_name=lab.name,
            revision=lab.revision, sampling=sampling.as_dict(), seed=seed, think_start=lab.card.think_start,
            think_end=lab.card.think_end, meta={"backend": "vllm"}))
    return traces


def vllm_generator(lab):
    """A `generate(prompts, seeds, sampling)` for `bench.run` that runs on vLLM."""
    vllm = require_vllm()
    llm = engine(lab)

    def generate(prompts, seeds, sampling: dict):
        settings = lab._sampling(sampling)
        texts = [lab.format_prompt(p) for p in prompts]
        outputs = llm.generate(texts, [sampling_params(vllm, settings, s) for s in seeds], use_tqdm=False)
        return traces_from_outputs(outputs, texts, prompts, seeds, lab, settings)

    return generate

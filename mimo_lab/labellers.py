"""Sentence labellers in Thought Anchors' taxonomy beyond the rules: a small learned one that ships with the
package, and an LLM judge for any loaded chat model.

Both follow the labeller protocol of `mimo_lab.segment` (a callable `(text, index, count) -> label`), and
both label a whole trace at once (`label_trace`), where context helps.

`LearnedLabeller` is a multinomial logistic regression over sparse text features (words and word pairs,
the first words, position in the trace, numbers new or seen before, overlap with the problem, the next
chunk's words) followed, on a whole trace, by a Viterbi pass with label-to-label transitions learned from
the same data. It was trained on the 2,338 chunks of the 20 Thought Anchors traces shipped in
`shared/data/thought_anchors` (their LLM's tags; `benchmarks/ta_labeller.py` retrains it and measures it by
cross-validation over problems — train on four problems, test on the fifth; figures in
`benchmarks/RESULTS.md`). Its weights are safetensors plus a JSON vocabulary: no pickle, no download.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mimo_lab.segment import LABELS, SEGMENT_KINDS

_HERE = Path(__file__).parent / "data"
WEIGHTS = _HERE / "ta_labeller.safetensors"
VOCABULARY = _HERE / "ta_labeller.json"

# Thought Anchors' function tags as the paper defines them (Bogdan et al. 2025, arXiv 2506.19143, Table 1)
DEFINITIONS = {
    "problem_setup": "Parsing or rephrasing the problem",
    "plan_generation": "Stating or deciding on a plan of action, meta-reasoning",
    "fact_retrieval": "Recalling facts, formulas, problem details without computation",
    "active_computation": "Algebra, calculations, or other manipulations toward the answer",
    "uncertainty_management": "Expressing confusion, re-evaluating, including backtracking",
    "result_consolidation": "Aggregating intermediate results, summarizing, or preparing",
    "self_checking": "Verifying previous steps, checking calculations, and re-confirmations",
    "final_answer_emission": "Explicitly stating the final answer",
}

_WORD = re.compile(r"[a-z]+|\d+|\\[a-z]+|[=+\-*/^()<>?!:$\\{}\[\]]")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CALC = re.compile(r"\d\s*[-+*/×^]\s*\d.*=")


def _words(text: str) -> list[str]:
    return ["<num>" if w.isdigit() else w for w in _WORD.findall(text.lower())]


def features(chunk: str, index: int, count: int, *, following: str = "", problem: str = "",
             before: str = "") -> dict[str, float]:
    """The sparse features of one chunk: its words and word pairs, its first one to three words, its
    position (tenths of the trace, first, last three), length and digit share, "=", "\\boxed", "?", newlines;
    the share of its numbers that are new (not in the problem or before it) and that come from the problem,
    the share of its longer words found in the problem and before it, a calculation pattern, and the next
    chunk's words. Counts are damped (1 + log count)."""
    return _features(chunk, index, count, following, set(_NUMBER.findall(problem)), set(_NUMBER.findall(before)),
                     set(_words(problem)), set(_words(before)))


def _features(chunk: str, index: int, count: int, following: str, given: set, seen: set, in_problem: set,
              in_before: set) -> dict[str, float]:
    """`features` with the problem's and the earlier text's numbers and words as sets."""
    w = _words(chunk)
    f: Counter = Counter()
    for a in w:
        f["w:" + a] += 1
    for a, b in zip(w, w[1:], strict=False):
        f["b:" + a + "_" + b] += 1
    for k in (1, 2, 3):
        if len(w) >= k:
            f[f"f{k}:" + "_".join(w[:k])] += 1
    rel = index / max(1, count - 1)
    f[f"pos:{int(rel * 10)}"] += 1
    if index == 0:
        f["first"] += 1
    if index >= count - 3:
        f["last3"] += 1
    f[f"len:{min(8, int(math.log2(1 + len(chunk))))}"] += 1
    digits = sum(c.isdigit() for c in chunk) / max(1, len(chunk))
    f[f"dig:{min(4, int(digits * 20))}"] += 1
    for mark, name in (("=", "eq"), ("\\boxed", "boxed"), ("?", "q"), ("\n", "nl")):
        if mark in chunk:
            f["has:" + name] += 1
    numbers = _NUMBER.findall(chunk)
    if numbers:
        f[f"newnum:{int(4 * sum(x not in seen and x not in given for x in numbers) / len(numbers))}"] += 1
        f[f"nnum:{min(5, len(numbers))}"] += 1
        f[f"probnum:{int(4 * sum(x in given for x in numbers) / len(numbers))}"] += 1
    else:
        f["nonum"] += 1
    long_words = [x for x in w if len(x) > 3 and x.isalpha()]
    if long_words:
        f[f"probw:{int(4 * sum(x in in_problem for x in long_words) / len(long_words))}"] += 1
        f[f"seenw:{int(4 * sum(x in in_before for x in long_words) / len(long_words))}"] += 1
    if _CALC.search(chunk):
        f["calc"] += 1
    nxt = _words(following)
    for a in set(nxt):
        f["nw:" + a] += 1
    if nxt:
        f["nf1:" + nxt[0]] += 1
    return {k: 1 + math.log(v) for k, v in f.items()}


def trace_features(chunks: Sequence[str], problem: str = "") -> list[dict[str, float]]:
    """`features` for every chunk of one trace, with its context (the next chunk, the text before it); the
    earlier text's numbers and words are kept as running sets, not re-read for every chunk."""
    given, in_problem = set(_NUMBER.findall(problem)), set(_words(problem))
    seen, in_before, out = set(), set(), []
    for i, chunk in enumerate(chunks):
        out.append(_features(chunk, i, len(chunks), chunks[i + 1] if i + 1 < len(chunks) else "", given, seen,
                             in_problem, in_before))
        seen |= set(_NUMBER.findall(chunk))
        in_before |= set(_words(chunk))
    return out


@dataclass
class LabellerWeights:
    vocabulary: list[str]
    weight: torch.Tensor  # [features, labels]
    bias: torch.Tensor  # [labels]
    log_transition: torch.Tensor  # [labels, labels]: log P(label_i | label_{i-1})
    log_start: torch.Tensor  # [labels]
    log_prior: torch.Tensor  # [labels]: the training share of each label
    settings: dict

    def matrix(self, rows: Sequence[dict[str, float]]) -> torch.Tensor:
        """The L2-normalised feature matrix [len(rows), features] (features outside the vocabulary dropped)."""
        index = {name: j for j, name in enumerate(self.vocabulary)}
        x = torch.zeros(len(rows), len(self.vocabulary))
        for r, row in enumerate(rows):
            for name, value in row.items():
                j = index.get(name)
                if j is not None:
                    x[r, j] = value
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-6)

    def log_probs(self, rows: Sequence[dict[str, float]]) -> torch.Tensor:
        return (self.matrix(rows) @ self.weight + self.bias).log_softmax(-1)

    def save(self, weights: Path, vocabulary: Path) -> None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias, "log_transition": self.log_transition,
                   "log_start": self.log_start, "log_prior": self.log_prior}, str(weights))
        vocabulary.write_text(json.dumps({"labels": list(LABELS), "settings": self.settings,
                                          "vocabulary": self.vocabulary}, indent=0))

    @classmethod
    def load(cls, weights: Path = WEIGHTS, vocabulary: Path = VOCABULARY) -> LabellerWeights:
        tensors = load_file(str(weights))
        meta = json.loads(vocabulary.read_text())
        if tuple(meta["labels"]) != LABELS:
            raise ValueError(f"{vocabulary} was trained for labels {meta['labels']}, not {list(LABELS)}")
        return cls(meta["vocabulary"], tensors["weight"], tensors["bias"], tensors["log_transition"],
                   tensors["log_start"], tensors["log_prior"], meta["settings"])


def fit(traces: Sequence[tuple[Sequence[str], Sequence[str], str]], *, l2: float = 3e-4,
        class_weight_power: float = 0.5, min_count: int = 2, min_groups: int = 2,
        groups: Sequence[str] | None = None, transition_weight: float = 0.3) -> LabellerWeights:
    """Train on traces given as (chunks, labels, problem text). A feature is kept when it occurs in at least
    `min_count` chunks and in the traces of at least `min_groups` groups (problems; `groups[i]` is trace i's,
    default: each trace its own), so that words of one problem do not stand in for a label. Loss:
    cross-entropy weighted by (balanced class weight) ** class_weight_power, plus l2 * ||W||^2, minimised by
    L-BFGS; transitions and start shares are counted (add-one smoothed)."""
    groups = list(groups) if groups is not None else [str(i) for i in range(len(traces))]
    rows, labels, spread = [], [], defaultdict(set)
    transitions, starts = torch.ones(len(LABELS), len(LABELS)), torch.ones(len(LABELS))
    for (chunks, tags, problem), group in zip(traces, groups, strict=True):
        if len(chunks) != len(tags):
            raise ValueError(f"a trace has {len(chunks)} chunks and {len(tags)} labels: one label per chunk")
        unknown = sorted(set(tags) - set(LABELS))
        if unknown:
            raise ValueError(f"labels {unknown} are not Thought Anchors tags: {', '.join(LABELS)} are")
        for i, (row, tag) in enumerate(zip(trace_features(chunks, problem), tags, strict=True)):
            rows.append(row)
            labels.append(LABELS.index(tag))
            for name in row:
                spread[name].add(group)
            if i == 0:
                starts[labels[-1]] += 1
            else:
                transitions[labels[-2], labels[-1]] += 1
    counts = Counter(name for row in rows for name in row)
    vocabulary = sorted(n for n, c in counts.items() if c >= min_count and len(spread[n]) >= min_groups)
    y = torch.tensor(labels)
    prior = torch.bincount(y, minlength=len(LABELS)).float()
    model = LabellerWeights(vocabulary, torch.zeros(len(vocabulary), len(LABELS)), torch.zeros(len(LABELS)),
                            (transitions / transitions.sum(1, keepdim=True)).log(), (starts / starts.sum()).log(),
                            (prior.clamp(min=1) / prior.sum()).log(),
                            {"l2": l2, "class_weight_power": class_weight_power, "min_count": min_count,
                             "min_groups": min_groups, "transition_weight": transition_weight,
                             "chunks": len(rows), "traces": len(traces)})
    x = model.matrix(rows)
    weight = torch.zeros(len(vocabulary), len(LABELS), requires_grad=True)
    bias = torch.zeros(len(LABELS), requires_grad=True)
    class_weight = (prior.sum() / (len(LABELS) * prior.clamp(min=1))) ** class_weight_power
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y, weight=class_weight) + l2 * (weight ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    model.weight, model.bias = weight.detach(), bias.detach()
    return model


def cohen_kappa(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e): observed agreement against the agreement expected from the two
    label shares alone (Cohen 1960)."""
    truth, predicted = list(truth), list(predicted)
    if len(truth) != len(predicted) or not truth:
        raise ValueError(f"cohen_kappa: {len(truth)} and {len(predicted)} labels: two equal, non-empty lists")
    n = len(truth)
    observed = sum(a == b for a, b in zip(truth, predicted, strict=True)) / n
    share_t, share_p = Counter(truth), Counter(predicted)
    expected = sum(share_t[k] * share_p[k] for k in share_t) / n ** 2
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def viterbi(log_probs: torch.Tensor, model: LabellerWeights, weight: float) -> list[int]:
    """The most likely label sequence: emissions log p(label | chunk) - weight * log prior (posteriors made
    likelihood-like), transitions weight * log P(label_i | label_{i-1})."""
    emissions = log_probs - weight * model.log_prior
    score = emissions[0] + weight * model.log_start
    back = []
    for t in range(1, len(emissions)):
        best, arg = (score[:, None] + weight * model.log_transition).max(0)
        back.append(arg)
        score = best + emissions[t]
    path = [int(score.argmax())]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1]


class LearnedLabeller:
    """The shipped labeller trained on Thought Anchors' tags.

    As a labeller (`labeller(text, index, count)`) it sees one chunk and its position only; on a whole
    trace (`label_trace`, or `for_trace` to get a labeller for `trace.segments`) it also reads the next
    chunk, the text before each chunk and the problem, and decodes the sequence with its transitions —
    the better of the two (see benchmarks/RESULTS.md for both).
    """

    def __init__(self, weights: LabellerWeights | None = None):
        self.model = weights or LabellerWeights.load()

    def __call__(self, text: str, index: int, count: int) -> str:
        return LABELS[int(self.model.log_probs([features(text, index, count)])[0].argmax())]

    def label_chunks(self, chunks: Sequence[str], problem: str = "") -> list[str]:
        """Labels for one trace's chunks, in order (context and transitions used)."""
        chunks = list(chunks)
        if not chunks:
            return []
        log_probs = self.model.log_probs(trace_features(chunks, problem))
        return [LABELS[i] for i in viterbi(log_probs, self.model, self.model.settings["transition_weight"])]

    def label_trace(self, trace, kind: str = "thought_anchors") -> list[str]:
        """Labels for a Trace's segments of `kind` (default: Thought Anchors' chunks), its prompt as the problem."""
        from mimo_lab.checks import check_choice

        kind = check_choice("kind", kind, SEGMENT_KINDS)
        chunks = [s.stripped for s in trace.segments(kind)]
        return self.label_chunks(chunks, trace.prompt_display)

    def for_trace(self, trace, kind: str = "thought_anchors"):
        """A labeller holding `label_trace(trace, kind)`: `trace.segments(kind, labeller=...)`."""
        from mimo_lab.thought_anchors import ChunkTags

        return ChunkTags([{"function_tags": [label]} for label in self.label_trace(trace, kind)])

    def __repr__(self) -> str:
        s = self.model.settings
        return f"LearnedLabeller({len(self.model.vocabulary)} features, trained on {s['chunks']} chunks)"


# ----------------------------------------------------------------------------- an LLM as the judge

JUDGE_INSTRUCTIONS = (
    "You label the sentences of a model's reasoning about a math problem with one function tag each.\n"
    "Tags:\n" + "\n".join(f"- {tag}: {text}" for tag, text in DEFINITIONS.items()) + "\n"
    "Answer with the tag only."
)


def judge_prompt(chunk: str, index: int, chunks: Sequence[str], problem: str = "", context: int = 3) -> list[dict]:
    """The chat messages asking for chunk `index`'s tag: the tag definitions, the problem, up to `context`
    chunks before it, and the chunk."""
    before = "\n".join(f"[{i}] {c}" for i, c in enumerate(chunks[max(0, index - context):index],
                                                          start=max(0, index - context)))
    user = (f"Problem: {problem}\n\n" if problem else "") + (f"Earlier sentences:\n{before}\n\n" if before else "") + \
        f"Sentence [{index}] to label:\n{chunk}\n\nWhich tag?"
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS}, {"role": "user", "content": user}]


def parse_tag(reply: str) -> str | None:
    """The tag a judge's reply names: the last `</think>` onwards, then the first tag name found (written with
    underscores, spaces or hyphens, any case); None when it names none."""
    answer = reply.rsplit("</think>", 1)[-1].lower()
    found = []
    for tag in LABELS:
        pattern = r"\b" + r"[\s_-]?".join(map(re.escape, tag.split("_"))) + r"\b"
        match = re.search(pattern, answer)
        if match:
            found.append((match.start(), tag))
    return min(found)[1] if found else None


class LLMJudgeLabeller:
    """Thought Anchors' tag definitions applied by any loaded chat model (greedy decoding).

    `labeller(text, index, count)` asks about one sentence alone; `label_chunks` / `label_trace` give the judge
    the problem and the preceding chunks. A reply that names no tag falls back to `fallback` (default: the
    rule labeller), and `replies` keeps every reply with whether it parsed.
    """

    def __init__(self, lab, *, max_new_tokens: int = 512, context: int = 3, fallback=None):
        from mimo_lab.checks import check_int
        from mimo_lab.segment import DEFAULT_LABELLER

        self.lab = lab
        self.max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=1)
        self.context = check_int("context", context, minimum=0)
        self.fallback = fallback or DEFAULT_LABELLER
        self.replies: list[dict] = []

    def _ask(self, messages: list[dict], chunk: str, index: int, count: int) -> str:
        trace = self.lab.generate(messages, greedy=True, max_new_tokens=self.max_new_tokens, mtp=False)
        tag = parse_tag(trace.text)
        self.replies.append({"index": index, "reply": trace.text, "tag": tag, "parsed": tag is not None})
        return tag if tag is not None else self.fallback(chunk, index, count)

    def __call__(self, text: str, index: int, count: int) -> str:
        return self._ask(judge_prompt(text, 0, [text], context=0), text, index, count)

    def label_chunks(self, chunks: Sequence[str], problem: str = "") -> list[str]:
        chunks = list(chunks)
        return [self._ask(judge_prompt(c, i, chunks, problem, self.context), c, i, len(chunks))
                for i, c in enumerate(chunks)]

    def label_trace(self, trace, kind: str = "thought_anchors") -> list[str]:
        from mimo_lab.checks import check_choice

        kind = check_choice("kind", kind, SEGMENT_KINDS)
        return self.label_chunks([s.stripped for s in trace.segments(kind)], trace.prompt_display)


__all__ = ["DEFINITIONS", "JUDGE_INSTRUCTIONS", "LLMJudgeLabeller", "LabellerWeights", "LearnedLabeller", "cohen_kappa",
           "features", "fit", "judge_prompt", "parse_tag", "trace_features", "viterbi"]

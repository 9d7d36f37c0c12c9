"""Trace: one generated reasoning trace with per-token analytics, its think/answer split; save/load.

Positions: a *position* indexes the full token sequence the model reads, the prompt's tokens first
(0 .. prompt_length - 1), then the generated ones (prompt_length .. prompt_length + n - 1). Every
position a Trace reports or accepts (`tokens`'s index, `forking_tokens()`, `token_at`, `divergence`,
`Lab.resample`) is such a position, the same as the rows of `Lab.capture` and the query/key index of
attention, so a position from one call goes into any other unchanged. The per-token tensors below
are indexed by *generated-token index* i = position - prompt_length.

Per generated token i, in generation order:
- `token_ids[i]`, `token_texts[i]`, `spans[i]` = (start, end) character span in `text`;
- `logprobs[i]`: log-probability of the chosen token under the model (temperature 1), nats;
- `entropies[i]`: entropy of the distribution the token was sampled from (after temperature,
  top-k and top-p; for greedy decoding, the model's distribution), nats;
- `model_entropies[i]`: entropy of the model's own distribution (temperature 1), nats;
- `top_ids[i]`, `top_logprobs[i]`, `top_texts[i]`: the k most likely tokens under the model;
- for models with an MTP head (`mtp` not None): at position i the MTP head's guess for token
  i+2 (`mtp["pred_id"]`, its probability `mtp["pred_prob"]`), whether it came true
  (`mtp["hit"]`: 1, 0, or -1 where token i+2 was never generated), and the probability it had
  given to the token actually generated at i+2 (`mtp["target_prob"]`).
The EOS token that ended generation is not part of `token_ids`; `finish_reason` says why it
ended: "stop" (EOS), "length" (max_new_tokens) or "stopped" (interrupted).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from mimo_lab.answer import extract_answer
from mimo_lab.checks import check_float, check_int, check_path, show
from mimo_lab.segment import Segments, segment

FORMAT_VERSION = 1
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """16 hex digits hashing the vocabulary (token -> id, added tokens included): two tokenizers with
    the same fingerprint read every token id as the same token (MiMo-7B-Base and -RL share one)."""
    cached = _FINGERPRINTS.get(tokenizer)
    if cached is None or cached[0] != len(tokenizer):
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
        cached = _FINGERPRINTS[tokenizer] = (len(tokenizer), digest)
    return cached[1]


@dataclass(eq=False)
class Trace:
    """A generated trace; build it with `Lab.generate`, reopen it with `Trace.load`."""

    prompt: str | list[dict]  # a string, or the chat messages as given (kept as messages)
    text: str
    token_ids: torch.Tensor  # [n] long
    token_texts: list[str]
    spans: torch.Tensor  # [n, 2] long, character offsets into text
    logprobs: torch.Tensor  # [n] float32
    entropies: torch.Tensor  # [n] float32
    model_entropies: torch.Tensor  # [n] float32
    top_ids: torch.Tensor  # [n, k] long
    top_logprobs: torch.Tensor  # [n, k] float32
    top_texts: list[list[str]]
    finish_reason: str
    prompt_text: str = ""
    prompt_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    model_name: str = ""
    revision: str | None = None
    sampling: dict = field(default_factory=dict)
    seed: int | None = None
    think_start: str | None = "<think>"
    think_end: str | None = "</think>"
    mtp: dict[str, torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)
    tokenizer_fingerprint: str = ""  # `tokenizer_fingerprint(tokenizer)` of the generating tokenizer; "" if unknown

    # ------------------------------------------------------------------ text views
    @property
    def prompt_length(self) -> int:
        """Position of the first generated token: positions count the prompt's tokens, then the generated ones."""
        return int(self.prompt_ids.numel())

    def __len__(self) -> int:
        return int(self.token_ids.numel())

    @property
    def positions(self) -> range:
        """The positions of the generated tokens: prompt_length .. prompt_length + len(self) - 1."""
        return range(self.prompt_length, self.prompt_length + len(self))

    def index_of(self, position: int) -> int:
        """The generated-token index (into token_ids, logprobs, ...) of a position; ValueError outside them."""
        position = check_int("position", position)
        if position not in self.positions:
            raise ValueError(f"position={position} is not a generated token of this trace: "
                             f"{self._positions_text()} are accepted")
        return position - self.prompt_length

    def _positions_text(self) -> str:
        if not len(self):
            return "no positions (the trace generated no tokens)"
        return f"positions {self.prompt_length} to {self.prompt_length + len(self) - 1}"

    @property
    def prompt_display(self) -> str:
        """The prompt as one line of text (chat messages shown as `role: content`)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return " | ".join(f"{m.get('role')}: {m.get('content')}" for m in self.prompt)

    def _think_bounds(self) -> tuple[int, int, int] | None:
        """(start of thinking, end of thinking, start of answer) in `text`, or None without think tags."""
        if not self.think_start or not self.think_end:
            return None
        open_at = self.text.find(self.think_start)
        if open_at < 0:
            # Templates that open the turn with <think> (R1-distill) leave only the closing tag.
            close_at = self.text.find(self.think_end)
            if close_at < 0:
                # thinking still open at the end (cut off) if the template opened it; no think block otherwise
                return (0, len(self.text), len(self.text)) if self.opened_thinking else None
            return 0, close_at, close_at + len(self.think_end)
        begin = open_at + len(self.think_start)
        close_at = self.text.find(self.think_end, begin)
        if close_at < 0:
            return begin, len(self.text), len(self.text)
        return begin, close_at, close_at + len(self.think_end)

    @property
    def thinking(self) -> str:
        """The text inside <think>…</think> (to the end if the trace never closed it)."""
        bounds = self._think_bounds()
        return "" if bounds is None else self.text[bounds[0] : bounds[1]].strip()

    @property
    def answer(self) -> str:
        """The text after </think> (all of the text for a model without think tags); "" when the
        thinking never closed (cut off inside it), whether the model wrote <think> or the template
        opened it: an unfinished thought is no answer (the lighteval convention)."""
        if not self.closed_thinking:
            return ""
        bounds = self._think_bounds()
        return self.text.strip() if bounds is None else self.text[bounds[2] :].strip()

    @property
    def opened_thinking(self) -> bool:
        """Whether the trace thinks: it wrote the opening tag, or the chat template opened it."""
        if not self.think_start:
            return False
        return (self.think_start in self.text or (self.think_end or "\0") in self.text
                or self.prompt_text.rstrip().endswith(self.think_start))

    @property
    def closed_thinking(self) -> bool:
        """Whether the think block was closed (False: the trace stopped inside its thinking)."""
        return not self.opened_thinking or (self.think_end or "") in self.text

    @property
    def thinking_span(self) -> tuple[int, int] | None:
        """Character span of `thinking` in `text` (surrounding whitespace excluded; None without think tags)."""
        bounds = self._think_bounds()
        if bounds is None:
            return None
        inner = self.text[bounds[0] : bounds[1]]
        start = bounds[0] + len(inner) - len(inner.lstrip())
        return start, max(start, bounds[0] + len(inner.rstrip()))

    @property
    def final_answer(self) -> str | None:
        """The extracted answer from `answer`: last \\boxed{}, "the answer is ...", or the last number;
        None when there is none (and always when the thinking never closed)."""
        return extract_answer(self.answer)[0]

    @property
    def num_tokens(self) -> int:
        return len(self)

    # ------------------------------------------------------------------ tables
    @property
    def tokens(self) -> pd.DataFrame:
        """One row per generated token, indexed by its position (prompt_length + i): text, id, span,
        logprob, prob, entropy, alternatives, MTP."""
        n = len(self)
        spans = self.spans.tolist()
        think = self.thinking_span
        frame = pd.DataFrame({
            "text": self.token_texts,
            "id": self.token_ids.tolist(),
            "start": [s for s, _ in spans],
            "end": [e for _, e in spans],
            "logprob": self.logprobs.tolist(),
            "prob": self.logprobs.exp().tolist(),
            "entropy": self.entropies.tolist(),
            "model_entropy": self.model_entropies.tolist(),
            "alternatives": [list(zip(texts, lps.exp().tolist(), strict=True))
                             for texts, lps in zip(self.top_texts, self.top_logprobs, strict=True)],
            "in_thinking": [think is not None and s < think[1] and e > think[0] for s, e in spans],
        }, index=pd.RangeIndex(self.prompt_length, self.prompt_length + n, name="position"))
        if self.mtp is not None:
            frame["mtp_pred_id"] = self.mtp["pred_id"].tolist()
            frame["mtp_pred_prob"] = self.mtp["pred_prob"].tolist()
            frame["mtp_hit"] = self.mtp["hit"].tolist()
            frame["mtp_target_prob"] = self.mtp["target_prob"].tolist()
        return frame

    def mtp_accuracy(self) -> float | None:
        """Share of positions whose MTP guess for token i+2 came true (None without an MTP head)."""
        if self.mtp is None:
            return None
        hit = self.mtp["hit"]
        known = hit >= 0
        return float(hit[known].float().mean()) if known.any() else float("nan")

    # ------------------------------------------------------------------ segments
    def segments(self, kind: str = "sentence", labeller=None) -> Segments:
        """Sentences (or steps = lines) of the thinking text, labelled; spans index into `text`.

        Models without think tags: of the whole text. `labeller`: any callable
        `(sentence, index, count) -> label` (default: `segment.RuleLabeller`).
        """
        key = (kind, id(labeller))  # labellers need not be hashable (RuleLabeller is a dataclass)
        cache = self.__dict__.setdefault("_segment_cache", {})
        if key not in cache:
            span = self.thinking_span or (0, len(self.text))
            # the labeller is kept with its result, so its id cannot be reused while cached
            segments = segment(self.text[span[0]:span[1]], kind=kind, labeller=labeller, offset=span[0],
                               full_text=self.text)
            segments.positions = _segment_positions(segments, self.spans, self.prompt_length)
            cache[key] = (labeller, segments)
        return cache[key][1]

    @property
    def sentences(self) -> Segments:
        return self.segments("sentence")

    @property
    def steps(self) -> Segments:
        return self.segments("step")

    def forking_tokens(self, quantile: float = 0.8) -> pd.DataFrame:
        """Tokens whose sampling entropy is in the top (1 - quantile) share ("forks", Wang et al. 2025),
        highest first, indexed by position (pass one straight to `lab.resample`, `lab.capture(trace)[...]`)."""
        quantile = check_float("quantile", quantile)
        if not 0 <= quantile < 1:
            raise ValueError(f"quantile={quantile!r} is out of range: a number in [0, 1) is accepted")
        frame = self.tokens[["text", "entropy", "prob", "alternatives"]]
        if frame.empty:
            return frame
        threshold = float(torch.quantile(self.entropies.float(), quantile))
        forks = frame[frame["entropy"] >= threshold].copy()
        forks["sentence"] = [self.sentences.at(int(self.spans[i - self.prompt_length, 0])) for i in forks.index]
        return forks.sort_values("entropy", ascending=False)

    def token_at(self, char_offset: int) -> int:
        """The position of the generated token whose span covers a character offset of `text`."""
        char_offset = check_int("char_offset", char_offset)
        if not 0 <= char_offset < len(self.text):
            raise ValueError(f"char_offset={char_offset} is out of range: the text has {len(self.text)} characters "
                             f"(0 to {len(self.text) - 1} are accepted)")
        ends = self.spans[:, 1].contiguous()
        index = int(torch.searchsorted(ends, torch.tensor(char_offset), right=True).clamp(max=len(self) - 1))
        return self.prompt_length + index

    def divergence(self, other: Trace):
        """Where this trace and `other` (a sample of the same prompt) part ways; see `mimo_lab.compare`."""
        from mimo_lab.compare import divergence

        return divergence(self, other, _names=("self", "other"))

    # ------------------------------------------------------------------ figures
    def to_frame(self) -> pd.DataFrame:
        """One row per generated token, indexed by position: the same table as `trace.tokens`."""
        return self.tokens

    def plot(self, kind: str = "sentence"):
        """Entropy and log-prob along the trace, with step boundaries, markers and forks (plotly)."""
        from mimo_lab.viz.timeline import entropy_figure

        return entropy_figure(self, kind=kind)

    def token_view(self, color_by: str = "entropy"):
        """The text with tokens coloured by entropy / logprob / mtp_target_prob (shows itself)."""
        from mimo_lab.viz.tokens import TokenView

        return TokenView(self, color_by)

    def __repr__(self) -> str:
        head = self.text[:60].replace("\n", " ")
        return (f"Trace({len(self)} tokens, {self._positions_text()}, finish={self.finish_reason!r}, "
                f"final_answer={self.final_answer!r}, "
                f"text={head!r}{'...' if len(self.text) > 60 else ''})")

    def _repr_html_(self) -> str:
        from mimo_lab.viz.tokens import token_html

        return token_html(self)

    # ------------------------------------------------------------------ persistence
    _TENSORS = ("token_ids", "spans", "logprobs", "entropies", "model_entropies", "top_ids", "top_logprobs",
                "prompt_ids")

    def save(self, path: str | Path) -> Path:
        """Write `path/trace.json` (text, settings, model) and `path/tensors.safetensors`."""
        path = check_path("path", path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).contiguous().cpu() for name in self._TENSORS}
        if self.mtp is not None:
            tensors.update({f"mtp.{k}": v.contiguous().cpu() for k, v in self.mtp.items()})
        save_file(tensors, str(path / "tensors.safetensors"))
        record = {
            "format_version": FORMAT_VERSION, "prompt": self.prompt, "prompt_text": self.prompt_text,
            "text": self.text, "token_texts": self.token_texts, "top_texts": self.top_texts,
            "finish_reason": self.finish_reason, "model_name": self.model_name, "revision": self.revision,
            "sampling": self.sampling, "seed": self.seed, "think_start": self.think_start,
            "think_end": self.think_end, "meta": self.meta, "tokenizer_fingerprint": self.tokenizer_fingerprint,
        }
        (path / "trace.json").write_text(json.dumps(record, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Reopen a trace written by `save`.

        A newer format version is refused (naming both versions); fields unknown to this version are
        ignored; a missing or corrupt field is named with its file.
        """
        path = check_path("path", path)
        record_file, tensor_file = path / "trace.json", path / "tensors.safetensors"
        if not record_file.is_file() or not tensor_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved Trace: expected trace.json and tensors.safetensors in it")
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{record_file} is corrupt: it is not JSON ({err})") from err
        if not isinstance(record, dict):
            raise ValueError(f"{record_file} is corrupt: it holds a {type(record).__name__}, not a JSON object")
        version = record.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{record_file}: field 'format_version' is missing or corrupt ({version!r}): this "
                             f"mimo_lab reads trace format {FORMAT_VERSION}")
        if version > FORMAT_VERSION:
            raise ValueError(f"{record_file} has trace format {version}, newer than the {FORMAT_VERSION} this "
                             "mimo_lab reads: upgrade mimo_lab to open it")
        if version < FORMAT_VERSION:
            raise ValueError(f"{record_file} has trace format {version}, older than the {FORMAT_VERSION} this "
                             "mimo_lab reads")
        fields = {}
        for name, (kinds, required) in _RECORD_FIELDS.items():
            if name not in record:
                if required:
                    raise ValueError(f"{record_file}: field {name!r} is missing")
                continue
            value = record[name]
            if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
                raise ValueError(f"{record_file}: field {name!r} is corrupt: {type(value).__name__} "
                                 f"{show(value, 60)}, expected {' or '.join(k.__name__ for k in kinds)}")
            fields[name] = value
        try:
            tensors = load_file(str(tensor_file))
        except Exception as err:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
            raise ValueError(f"{tensor_file} is corrupt: it does not read as safetensors ({err})") from err
        for name in cls._TENSORS:
            if name not in tensors:
                raise ValueError(f"{tensor_file}: tensor {name!r} is missing")
        n = tensors["token_ids"].numel()
        for name, rows in (("spans", n), ("logprobs", n), ("entropies", n), ("model_entropies", n),
                           ("top_ids", n), ("top_logprobs", n)):
            if tensors[name].shape[:1] != (rows,):
                raise ValueError(f"{tensor_file}: tensor {name!r} is corrupt: shape {tuple(tensors[name].shape)}, "
                                 f"but the trace has {n} tokens")
        for name in ("token_texts", "top_texts"):
            if len(fields[name]) != n:
                raise ValueError(f"{record_file}: field {name!r} is corrupt: {len(fields[name])} entries for "
                                 f"{n} tokens")
        mtp = {k[4:]: v for k, v in tensors.items() if k.startswith("mtp.")} or None
        return cls(**fields, **{name: tensors[name] for name in cls._TENSORS}, mtp=mtp)


def _segment_positions(segments: Segments, spans, prompt_length: int) -> list[tuple[int, int]]:
    """Each segment's token positions [start, end): the tokens that start inside it (empty at the
    trace's first position when none does)."""
    of_token = segments.token_segments(spans)
    out = []
    for s in segments:
        members = [i for i, seg in enumerate(of_token) if seg == s.index]
        out.append((prompt_length + members[0], prompt_length + members[-1] + 1) if members
                   else (prompt_length, prompt_length))
    return out



# trace.json's fields: accepted JSON types, and whether a file without it is refused
_RECORD_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "prompt": ((str, list), True), "text": ((str,), True), "token_texts": ((list,), True),
    "top_texts": ((list,), True), "finish_reason": ((str,), True), "prompt_text": ((str,), False),
    "model_name": ((str,), False), "revision": ((str, type(None)), False), "sampling": ((dict,), False),
    "seed": ((int, type(None)), False), "think_start": ((str, type(None)), False),
    "think_end": ((str, type(None)), False), "meta": ((dict,), False), "tokenizer_fingerprint": ((str,), False),
}

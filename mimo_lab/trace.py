"""Trace: one generated reasoning trace with per-token analytics, its think/answer split; save/load.

Per generated token (position i, in generation order):
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

    prompt: str
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
        """One row per generated token: text, id, span, logprob, prob, entropy, alternatives, MTP."""
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
        }, index=pd.RangeIndex(n, name="position"))
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
            cache[key] = (labeller, segment(self.text[span[0]:span[1]], kind=kind, labeller=labeller,
                                            offset=span[0], full_text=self.text))
        return cache[key][1]

    @property
    def sentences(self) -> Segments:
        return self.segments("sentence")

    @property
    def steps(self) -> Segments:
        return self.segments("step")

    def forking_tokens(self, quantile: float = 0.8) -> pd.DataFrame:
        """Tokens whose sampling entropy is in the top (1 - quantile) share ("forks", Wang et al. 2025)."""
        if not 0 <= quantile < 1:
            raise ValueError(f"quantile {quantile!r} out of range: use a number in [0, 1)")
        frame = self.tokens[["text", "entropy", "prob", "alternatives"]]
        if frame.empty:
            return frame
        threshold = float(torch.quantile(self.entropies.float(), quantile))
        forks = frame[frame["entropy"] >= threshold].copy()
        forks["sentence"] = [self.sentences.at(int(self.spans[i, 0])) for i in forks.index]
        return forks.sort_values("entropy", ascending=False)

    def token_at(self, char_offset: int) -> int:
        """Index of the token whose span covers a character offset of `text`."""
        if not 0 <= char_offset < len(self.text):
            raise ValueError(f"character offset {char_offset} out of range: the text has {len(self.text)} characters")
        ends = self.spans[:, 1].contiguous()
        return int(torch.searchsorted(ends, torch.tensor(char_offset), right=True).clamp(max=len(self) - 1))

    # ------------------------------------------------------------------ figures
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
        return (f"Trace({len(self)} tokens, finish={self.finish_reason!r}, final_answer={self.final_answer!r}, "
                f"text={head!r}{'...' if len(self.text) > 60 else ''})")

    def _repr_html_(self) -> str:
        from mimo_lab.viz.tokens import token_html

        return token_html(self)

    # ------------------------------------------------------------------ persistence
    _TENSORS = ("token_ids", "spans", "logprobs", "entropies", "model_entropies", "top_ids", "top_logprobs",
                "prompt_ids")

    def save(self, path: str | Path) -> Path:
        """Write `path/trace.json` (text, settings, model) and `path/tensors.safetensors`."""
        path = Path(path)
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
        """Reopen a trace written by `save`."""
        path = Path(path)
        if not (path / "trace.json").is_file() or not (path / "tensors.safetensors").is_file():
            raise FileNotFoundError(f"{path} is not a saved Trace: expected trace.json and tensors.safetensors in it")
        record = json.loads((path / "trace.json").read_text())
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: trace format {record.get('format_version')!r}, this mimo_lab reads "
                             f"{FORMAT_VERSION}")
        tensors = load_file(str(path / "tensors.safetensors"))
        mtp = {k[4:]: v for k, v in tensors.items() if k.startswith("mtp.")} or None
        record.pop("format_version")
        return cls(**record, **{name: tensors[name] for name in cls._TENSORS}, mtp=mtp)

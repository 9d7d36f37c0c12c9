"""MiMo-nano's tokenizer: a small byte-level BPE in Qwen2's format, with MiMo's chat markup.

Like Qwen2's: the same pre-tokenizer regex (so every digit is its own token), byte-level BPE,
`<|endoftext|>` as padding, ChatML `<|im_start|>` / `<|im_end|>` (the end of a turn, and EOS),
and `<think>` / `</think>` as single tokens. Saved as the standard files (tokenizer.json,
tokenizer_config.json with the chat template) and loaded back as a `Qwen2Tokenizer`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AddedToken, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

PAD, IM_START, IM_END, THINK, END_THINK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)
THINK_TOKENS = (THINK, END_THINK)
VOCAB_SIZE = 512

# MiMo's ChatML: one block per message; a system block only when a system message is given
# (MiMo recommends an empty one); the generation prompt opens the assistant turn and the
# model itself writes `<think>`.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_QUOTED_WORD = re.compile(r"'[a-z]{2,}'")


def _training_text(texts: Iterable[str]) -> Iterable[str]:
    # Words being spelled are left out of the BPE corpus, so they split into letters and
    # short pieces the model can learn to spell, not into whole-word tokens.
    for text in texts:
        yield _QUOTED_WORD.sub("' '", text)


def build_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Qwen2Tokenizer:
    """Train the byte-level BPE on `texts` and wrap it as a Qwen2Tokenizer with the chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_training_text(texts), trainer=trainer)
    vocab, merges = _with_spaced_letters(bpe.get_vocab(), _merges_of(bpe))
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token=IM_END, pad_token=PAD,
                         chat_template=CHAT_TEMPLATE, model_max_length=32768)
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tok


def _with_spaced_letters(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """Make every space + letter (" a" ... " z") one token, so that each letter of a spelling
    ("Letters: s, u, m, m, e, r, end") and the letter looked for ("the letter m") are the same token.
    The merges learned last make room for them (keeping any space + letter merge among them):
    only space + letter merges come after those, and they use no merged token."""
    spaced = {f"Ġ{c}" for c in string.ascii_lowercase}
    missing = sorted(spaced - vocab.keys())
    vocab, merges = dict(vocab), list(merges)
    freed = []
    for index in range(len(merges) - 1, -1, -1):
        if len(freed) == len(missing):
            break
        if "".join(merges[index]) not in spaced:
            freed.append(vocab.pop("".join(merges.pop(index))))
    for token, index in zip(missing, sorted(freed), strict=True):
        vocab[token] = index
    return vocab, merges + [("Ġ", token[1]) for token in missing]


def _merges_of(bpe: Tokenizer) -> list[tuple[str, str]]:
    import json

    merges = json.loads(bpe.to_str())["model"]["merges"]
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]

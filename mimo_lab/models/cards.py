"""Model cards: what mimo_lab knows about a checkpoint before loading it.

A card gives the chat format, the think tags, the context length, published benchmark figures and
one set of decoding settings per model: `default_decoding` (what `generate`, `stream` and the
Playground use when told nothing) and `recommended_sampling` (what anything drawing several
samples uses: resampling, `bench.run(samples > 1)`). Unknown models get a card built from their config and
tokenizer (`card_for`), so any causal LM loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ModelCard:
    """What a Lab needs to know about a model. Figures are percentages (pass@1 unless noted)."""

    name: str
    family: str = "unknown"  # "mimo", "mimo_v2", "qwen2", "qwen3", ...
    chat_format: str = "chatml"  # "chatml", or "template" (use the tokenizer's chat template as is)
    system_prompt: str | None = None  # None: send no system message; "": an empty one
    think_start: str | None = "<think>"
    think_end: str | None = "</think>"
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int | None = None
    max_new_tokens: int = 32768
    context_length: int = 32768
    has_mtp: bool = False
    published: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    greedy: bool = False  # the default decoding is greedy (the recommended sampling stays temperature / top-p)
    # MTP slot-0 convention its MTP was trained/served with: True = token embedding zeroed (vLLM/SGLang),
    # False = unmasked; None = the checkpoint config's `mtp_zero_first_embedding`. The MTP lens's default.
    mtp_zero_first_embedding: bool | None = None
    # What forcing the end of thinking appends to a prefix (`Lab.sentence_importance`, `Lab.answer_convergence`):
    # None = Thought Anchors' "\n</think>\n\nTherefore, the final answers is \\boxed{"
    forced_answer: str | None = None

    @property
    def recommended_sampling(self) -> dict:
        """The published sampling settings (keyword arguments of `Lab.generate`): used to draw several samples."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_new_tokens": self.max_new_tokens, "greedy": False}

    @property
    def default_decoding(self) -> dict:
        """What `generate`, `stream` and the Playground use when told nothing: greedy for a card that says
        so (MiMo-nano), else the recommended sampling."""
        return {**self.recommended_sampling, "greedy": True} if self.greedy else self.recommended_sampling

    def sampling(self) -> dict:
        """The recommended sampling settings as keyword arguments of `Lab.generate` (without `greedy`)."""
        return {k: v for k, v in self.recommended_sampling.items() if k != "greedy"}


_MIMO_NOTE = ("Qwen2 architecture + 1 MTP layer; empty system prompt; thinking in <think>...</think>. "
              "Figures: MiMo technical report (arXiv 2505.07608); AIME = mean of 32 samples.")


def _mimo(name: str, published: dict[str, float], notes: str = _MIMO_NOTE) -> ModelCard:
    return ModelCard(name=name, family="mimo", system_prompt="", temperature=0.6, top_p=0.95,
                     max_new_tokens=32768, context_length=32768, has_mtp=True, published=published, notes=notes,
                     mtp_zero_first_embedding=True)  # the serving engines' rule; Xiaomi's ~90% acceptance used it


CARDS: dict[str, ModelCard] = {
    card.name: card
    for card in (
        _mimo("XiaomiMiMo/MiMo-7B-Base", {"MATH-500": 37.4, "AIME 2024": 32.9, "AIME 2025": 24.3}),
        _mimo("XiaomiMiMo/MiMo-7B-SFT", {"MATH-500": 93.0, "AIME 2024": 58.7, "AIME 2025": 44.3}),
        _mimo("XiaomiMiMo/MiMo-7B-RL-Zero", {"MATH-500": 93.6, "AIME 2024": 56.4, "AIME 2025": 46.3}),
        _mimo("XiaomiMiMo/MiMo-7B-RL", {"MATH-500": 95.8, "AIME 2024": 68.2, "AIME 2025": 55.4,
                                        "LiveCodeBench v5": 57.8, "LiveCodeBench v6": 49.3,
                                        "GPQA-Diamond": 54.4}),
        _mimo("XiaomiMiMo/MiMo-7B-RL-0530", {"MATH-500": 97.2, "AIME 2024": 80.1, "AIME 2025": 70.2},
              notes=_MIMO_NOTE + " RL-0530 figures from its model page."),
        ModelCard(name="XiaomiMiMo/MiMo-V2-Flash", family="mimo_v2", chat_format="template", system_prompt=None,
                  temperature=0.8, top_p=0.95, max_new_tokens=32768, context_length=262144, has_mtp=True,
                  published={"AIME 2025": 94.1},
                  notes="309B MoE (15B active), hybrid sliding-window attention; native in transformers as "
                        "`mimo_v2_flash`. Needs several GPUs (device='auto') or remote execution."),
        ModelCard(name="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", family="qwen2", chat_format="template",
                  system_prompt=None, temperature=0.6, top_p=0.95, max_new_tokens=32768, context_length=131072,
                  published={"MATH-500": 92.8, "AIME 2024": 55.5, "GPQA-Diamond": 49.1},
                  notes="Template opens the turn with <think>; no system prompt (DeepSeek's advice)."),
        ModelCard(name="Qwen/Qwen3-8B", family="qwen3", chat_format="template", system_prompt=None,
                  temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=32768, context_length=32768,
                  published={"AIME 2024": 76.0, "AIME 2025": 67.3},
                  notes="Thinking mode (enable_thinking=True, the default); recommended top_k 20."),
    )
}

NANO_CARD = ModelCard(
    name="MiMo-nano", family="mimo", system_prompt="", temperature=0.6, top_p=0.95, max_new_tokens=768,
    context_length=32768, has_mtp=True, published={}, greedy=True, mtp_zero_first_embedding=None,
    forced_answer="\n</think>\n\n",  # as its traces cut short close the thinking, then answer from what was reached
    notes="Tiny MiMo-architecture model trained by `mimo-lab nano train`; see mimo_lab/nano/checkpoint/README.md. "
          "Decodes greedily by default (its accuracy is measured that way); give a temperature to sample "
          "(MiMo's 0.6 is the slider's default).",
)


def card_for(name: str, config=None, tokenizer=None, generation_config=None) -> ModelCard:
    """The card for a hub id / folder name; unknown models get one from their own files."""
    tail = name.rstrip("/").lower()
    for key, card in CARDS.items():
        if tail.endswith(key.split("/")[-1].lower()):
            return card
    model_type = getattr(config, "model_type", "unknown")
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    has_think = "<think>" in vocab and "</think>" in vocab
    card = ModelCard(
        name=name,
        family=model_type,
        chat_format="template" if tokenizer is not None and tokenizer.chat_template else "none",
        system_prompt="" if model_type == "mimo" else None,
        think_start="<think>" if has_think else None,
        think_end="</think>" if has_think else None,
        context_length=int(getattr(config, "max_position_embeddings", 32768) or 32768),
        max_new_tokens=min(32768, int(getattr(config, "max_position_embeddings", 32768) or 32768)),
        has_mtp=bool(getattr(config, "num_nextn_predict_layers", 0)),
    )
    if generation_config is not None:
        overrides = {}
        if getattr(generation_config, "temperature", None):
            overrides["temperature"] = float(generation_config.temperature)
        if getattr(generation_config, "top_p", None):
            overrides["top_p"] = float(generation_config.top_p)
        if getattr(generation_config, "top_k", None):
            overrides["top_k"] = int(generation_config.top_k)
        card = replace(card, **overrides)
    return card

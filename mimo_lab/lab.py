"""Lab: a loaded model, its tokenizer, its card and an nnsight wrapper; load() builds one.

`load()` checks everything it can (device, dtype, folder, config, shards) before it reads any
weights, and never executes code shipped with a checkpoint: MiMo loads through mimo_lab's own
classes, every other model type through the classes transformers ships.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from mimo_lab import generation
from mimo_lab.checks import check_bool, check_int
from mimo_lab.models.cards import NANO_CARD, ModelCard, card_for
from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM
from mimo_lab.nano import CHECKPOINT as NANO_CHECKPOINT
from mimo_lab.nano import NAME as NANO_NAME
from mimo_lab.trace import Trace

_SAMPLING_KEYS = set(generation.SAMPLING_KEYS)
NANO_ALIASES = {None, "nano", "mimo-nano", NANO_NAME.lower()}
_TORCH_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before mimo_lab changes it
SMALL_MODEL_PARAMS = 50_000_000  # below this, on the CPU, one thread is fastest (see benchmarks/threads.py)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- checks


def resolve_device(device: str | torch.device | None) -> torch.device:
    """"auto"/None: cuda when present, else cpu; also "cpu", "cuda", "cuda:N"."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device)
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} requested, but this machine has no CUDA GPU: use device='cpu' or 'auto'")
        index = int(text[5:]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {text!r} out of range: this machine has {torch.cuda.device_count()} GPU(s)")
        return torch.device(text)
    raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """"auto"/None: bfloat16 on a GPU, float32 on the CPU; or float32 / bfloat16 / float16."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'bfloat16' or 'float16'")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def resolve_checkpoint(name_or_path: str, revision: str | None = None) -> Path:
    """A local folder holding config.json: the folder itself, or the hub id's cached snapshot."""
    path = Path(name_or_path).expanduser()
    name_or_path = str(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{name_or_path!r} is a file: pass the checkpoint folder (the one holding config.json)")
        if not (path / "config.json").is_file():
            raise ValueError(f"folder {str(path)!r} has no config.json: it is not a model checkpoint")
        return path
    if name_or_path.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"checkpoint folder {name_or_path!r} does not exist")
    if name_or_path.count("/") != 1:
        raise ValueError(f"{name_or_path!r} is neither an existing folder nor a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    if _offline():
        raise ValueError(f"{name_or_path!r} is not in the local Hugging Face cache and the hub is offline "
                         f"(HF_HUB_OFFLINE=1): download it first (`hf download {name_or_path}`) or pass a local folder")
    try:
        return Path(snapshot_download(name_or_path, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]))
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one clear message
        raise ValueError(f"could not fetch {name_or_path!r} from the hub ({type(err).__name__}: {err}); "
                         "it is not in the local cache either. Check the name, the network, or pass a local folder"
                         ) from err


def check_shards(folder: Path) -> list[Path]:
    """Every safetensors shard the folder's index names exists and is whole (header and size)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        names = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if not names:
        raise ValueError(f"folder {str(folder)!r} has no safetensors weights (model.safetensors or shards + index)")
    shards = []
    for name in names:
        shard = folder / name
        if not shard.is_file():
            raise ValueError(f"shard {name!r} named in {index.name} is missing from {str(folder)!r}")
        size = shard.stat().st_size
        try:
            with shard.open("rb") as f:
                header_len = struct.unpack("<Q", f.read(8))[0]
                if header_len > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(f.read(header_len))
            data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"shard {str(shard)!r} is truncated or corrupt: its safetensors header does not "
                             f"parse ({err})") from err
        if 8 + header_len + data_end != size:
            raise ValueError(f"shard {str(shard)!r} is truncated or corrupt: {size} bytes on disk, its header "
                             f"describes {8 + header_len + data_end}")
        shards.append(shard)
    return shards


def _model_class(model_type: str, folder: Path):
    if model_type == "mimo":
        return MiMoConfig, MiMoForCausalLM
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"unsupported model_type {model_type!r} in {str(folder / 'config.json')!r}: mimo_lab loads "
                         "'mimo' and the causal LMs transformers ships natively (qwen2, qwen3, llama, "
                         "mimo_v2_flash, ...); it never runs code shipped with a checkpoint")
    return AutoConfig, AutoModelForCausalLM


# ----------------------------------------------------------------------------- Lab


class Lab:
    """A model ready to look into: `.model` (torch), `.tokenizer`, `.card`, `.nn` (nnsight)."""

    def __init__(self, model, tokenizer, card: ModelCard, name: str, revision: str | None = None, *,
                 remote: bool | str = False, has_weights: bool = True, threads: int | None = None):
        self.model = model
        self.threads = torch.get_num_threads() if threads is None else threads
        self.tokenizer = tokenizer
        self.card = card
        self.name = name
        self.revision = revision
        self.remote = remote
        self.has_weights = has_weights
        self._nn = None
        self._lock = threading.Lock()

    @property
    def trace_options(self) -> dict:
        """Keyword arguments every probe passes to `lab.nn.trace` (remote execution when asked)."""
        return {"remote": self.remote} if self.remote else {}

    def _need_weights(self, what: str) -> None:
        if not self.has_weights:
            where = "on NDIF (remote=True)" if self.remote is True else "elsewhere (weights=False)"
            raise ValueError(f"{what} needs the weights on this machine, but this Lab's model runs {where}")

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (f"Lab({self.name!r}, {params / 1e6:.1f}M parameters, {self.model.config.num_hidden_layers} layers, "
                f"device={self.device}, dtype={self.model.dtype}, threads={self.threads})")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def has_mtp(self) -> bool:
        return hasattr(self.model, "mtp_predictions") and len(getattr(self.model.model, "mtp_layers", [])) > 0

    @property
    def nn(self):
        """nnsight 0.8 `TransformersModel` around the loaded module (no second load)."""
        if self._nn is None:
            from nnsight.modeling.transformers import TransformersModel

            if self.remote is True:
                # NDIF serves the checkpoint by its hub id; the local module is an empty (meta) copy.
                self._nn = TransformersModel(self.name, tokenizer=self.tokenizer, dispatch=False)
            else:
                self._nn = TransformersModel(self.model, tokenizer=self.tokenizer)
        return self._nn

    # ------------------------------------------------------------------ prompts
    def format_prompt(self, prompt: str | list[dict], system: str | None = None) -> str:
        """The text the model sees: the chat template applied, the assistant turn opened."""
        return generation.format_prompt(self, prompt, system)

    def _sampling(self, sampling: dict, base: str = "default") -> generation.Sampling:
        """Sampling keyword arguments checked and completed from the card (base: "default" / "recommended")."""
        return generation.check_sampling(self, sampling, base)

    # ------------------------------------------------------------------ generation
    # (thin delegates to mimo_lab.generation)

    def generate(self, prompt_or_prompts: str | list, *, seed: int | list[int] | None = None,
                 mtp: bool | None = None, batch_size: int = 16, system: str | None = None,
                 preset: str = "default", **sampling) -> Trace | list[Trace]:
        """Generate a Trace (a list of them for a list of prompts) with per-token analytics.

        prompt_or_prompts: a string, a list of chat messages ({'role', 'content'}), or a list of either.
        sampling: temperature, top_p, top_k, max_new_tokens, greedy (default: `card.default_decoding`;
            recorded in `trace.sampling` with its source, "default" or "user").
        seed: the sample's seed (prompt i of a list uses seed + i, or seed[i] for a list of seeds);
            None draws one (recorded in the Trace).
        mtp: run the MTP head over the finished trace (default: when the model has one).
        system: the system prompt for a string prompt (default: the card's).
        preset: where unset settings come from: "default" (`card.default_decoding`) or "recommended"
            (`card.recommended_sampling`, for drawing several samples; recorded as source "recommended").
        """
        return generation.generate(self, prompt_or_prompts, seed=seed, mtp=mtp, batch_size=batch_size,
                                   system=system, preset=preset, **sampling)

    def score(self, prompt_or_traces, completion: str | None = None, *, system: str | None = None,
              mtp: bool | None = None, chunk_size: int = 1024, top_alternatives: int = 5,
              preset: str = "recommended", prompt_suffix: str = "", **sampling) -> Trace | list[Trace]:
        """Read a given text with this model (teacher forcing) and return it as a Trace with `generate`'s
        per-token analytics: log-prob, entropy at the sampling settings, model entropy, top-k, MTP guesses.

        prompt_or_traces: a prompt (string or chat messages) with `completion`, the text after it; or a
            Trace from any model (scored on its own token ids when this lab's tokenizer made it, else
            re-read from its prompt and text); or a list of Traces or (prompt, completion) pairs.
        sampling: temperature, top_p, top_k, greedy — the settings the entropies are computed at
            (default: `card.recommended_sampling`, recorded in `trace.sampling`; preset="default" for
            `card.default_decoding`).
        chunk_size: tokens per forward chunk (KV cache): memory is linear in the text's length.
        prompt_suffix: text the model reads after the formatted prompt, before the completion (e.g. "<think>\n"
            for an R1-style trace whose chat template opened the thinking); not re-read from a Trace's own ids.
        `trace.meta["scored"]` records the scorer, how the tokens were obtained, the log-prob of ending the
        turn right after the text (`end_logprob`) and, for a Trace, its model, seed and sampling.
        """
        from mimo_lab.score import score

        return score(self, prompt_or_traces, completion, system=system, mtp=mtp, chunk_size=chunk_size,
                     top_alternatives=top_alternatives, preset=preset, prompt_suffix=prompt_suffix, **sampling)

    def regenerate(self, trace: Trace, **overrides) -> Trace:
        """Generate again from a (saved) trace's prompt tokens, sampling settings and seed: the same tokens.
        A resampled trace is resampled again from its recorded position."""
        return generation.regenerate(self, trace, **overrides)

    def resample(self, trace: Trace, position: int, *, seed: int | None = None, mtp: bool | None = None,
                 **sampling) -> Trace:
        """Keep the trace's tokens before `position` and sample from there on ("resample from here").

        position: absolute, as everywhere (prompt tokens first): `trace.prompt_length` (resample every
            generated token) to `trace.prompt_length + len(trace)` (continue after the last one); the
            index of `trace.tokens` and `trace.forking_tokens()`.
        sampling: default `card.recommended_sampling` (drawing another sample; greedy would repeat the trace).
        """
        return generation.resample(self, trace, position, seed=seed, mtp=mtp, **sampling)

    def stream(self, prompt: str | list[dict], *, seed: int | None = None, system: str | None = None,
               mtp: bool | None = None, **sampling) -> Iterator[generation.StreamToken]:
        """Yield tokens as they are generated (arguments checked at the call, not at the first token).
        Leaving the loop early stops generation at once; the finished Trace, with the same analytics as
        `generate` (MTP included), is then at `lab.last_trace`."""
        return generation.stream(self, prompt, seed=seed, system=system, mtp=mtp, **sampling)

    last_trace: Trace | None = None

    # ------------------------------------------------------------------ probes: capture and lenses
    # (thin delegates to mimo_lab.probe.capture and mimo_lab.probe.lens)

    def capture(self, text_or_trace, sites=("resid", "attn_out", "mlp_out"), layers=None,
                chunk_size: int | None = None):
        """Activations at the named sites over a text or a Trace (a list: a list of them); returns
        `Activations`, row p = position p (see `mimo_lab.probe.capture`)."""
        from mimo_lab.probe.capture import capture

        return capture(self, text_or_trace, sites=sites, layers=layers, chunk_size=chunk_size)

    def logit_lens(self, text_or_trace, layers=None, k: int = 5, chunk_size: int | None = 1024):
        """Each layer's residual unembedded, top-k per position; returns `LensResult` (see `mimo_lab.probe.lens`)."""
        from mimo_lab.probe.lens import logit_lens

        return logit_lens(self, text_or_trace, layers=layers, k=k, chunk_size=chunk_size)

    def mtp_lens(self, text_or_trace, *, zero_first_embedding: bool | None = None, chunk_size: int = 1024):
        """This lab's MTP head's t+2 guesses along a text or a Trace; returns `MTPLens` (see `mimo_lab.probe.lens`)."""
        from mimo_lab.probe.lens import mtp_lens

        return mtp_lens(self, text_or_trace, zero_first_embedding=zero_first_embedding, chunk_size=chunk_size)

    # ------------------------------------------------------------------ probes: attention and interventions
    # (thin delegates to mimo_lab.probe.attention and mimo_lab.probe.intervene)

    def attention(self, text_or_trace, layer: int, heads=None, **options):
        """Attention of one layer's heads from post-RoPE q/k in query chunks; `.patterns`, `.by_sentence()`."""
        from mimo_lab.probe.attention import attention

        return attention(self, text_or_trace, layer, heads=heads, **options)

    def attention_between(self, text_or_trace, queries, keys, layers=None, what: str | None = None):
        """Every (layer, head)'s attention mass from `queries` to `keys` (positions); returns `HeadScores`."""
        from mimo_lab.probe.attention import attention_between

        return attention_between(self, text_or_trace, queries, keys, layers=layers, what=what)

    def receiver_heads(self, traces, layers=None, proximity: int = 4, kind: str = "sentence"):
        """Thought Anchors' receiver heads over traces (reasoning sentences only); returns `ReceiverHeads`."""
        from mimo_lab.probe.attention import receiver_heads

        return receiver_heads(self, traces, layers=layers, proximity=proximity, kind=kind)

    def activation_patching(self, clean, corrupted, target: str, layers=None, positions=None):
        """Clean residual patched into the corrupted run per (layer, position); returns `PatchingResult`."""
        from mimo_lab.probe.intervene import activation_patching

        return activation_patching(self, clean, corrupted, target, layers=layers, positions=positions)

    def steering_vector(self, positive, negative, layer: int):
        """Difference of mean residuals (positive - negative) after `layer`; returns `SteeringVector`."""
        from mimo_lab.probe.intervene import steering_vector

        return steering_vector(self, positive, negative, layer)

    def behaviour_vector(self, traces, layer: int, where="backtracking", *, kind: str = "sentence", lead: int = 1,
                         span: str = "sentence", against: str = "rest"):
        """In-context steering vector: mean residual at a behaviour's sentences (e.g. "backtracking")
        within `traces` minus the mean at their other positions (`against="rest"`) or at the other
        sentences (`"other_sentences"`); `span="lead"` takes only the `lead` tokens before each
        sentence. Returns a `SteeringVector`."""
        from mimo_lab.probe.intervene import behaviour_vector

        return behaviour_vector(self, traces, layer, where, kind=kind, lead=lead, span=span, against=against)

    def steer(self, vector, scale: float):
        """`with lab.steer(vector, scale):` adds scale x the layer's mean residual norm along `vector`."""
        from mimo_lab.probe.intervene import steer

        return steer(self, vector, scale)

    def suppress_sentence(self, trace: Trace, sentence: int, kind: str = "sentence", *, kl: str = "exact",
                          temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None):
        """Mask attention to one sentence from later tokens; KL per position (kl="exact" or
        "thought_anchors"); returns `SuppressionResult`."""
        from mimo_lab.probe.intervene import suppress_sentence

        return suppress_sentence(self, trace, sentence, kind, kl=kl, temperature=temperature, top_p=top_p,
                                 max_tokens=max_tokens)

    def suppression_matrix(self, trace: Trace, kind: str = "sentence", *, kl: str = "exact",
                           temperature: float | None = None, top_p: float | None = None,
                           max_tokens: int | None = None):
        """Every sentence suppressed in turn; returns `SuppressionMatrix` [suppressed, later]."""
        from mimo_lab.probe.intervene import suppression_matrix

        return suppression_matrix(self, trace, kind, kl=kl, temperature=temperature, top_p=top_p,
                                  max_tokens=max_tokens)

    # ------------------------------------------------------------------ resampling
    def sentence_importance(self, trace: Trace, *, samples: int = 32, reference=None, **options):
        """Which sentence mattered: Thought Anchors' black-box measures (Bogdan et al. 2025) by resampling.

        For every reasoning sentence i, `samples` rollouts from just before it (sentence i and all after it
        regenerated) and, forced, the answer sampled right there (`forced=True`); the rollouts of sentence
        i+1 are "sentence i kept". Returns `SentenceImportance`: resampling / counterfactual / forced
        importance (accuracy and KL), different_trajectories_fraction, overdeterminedness, as defined in
        `mimo_lab.resampling.measures`; `.to_frame()`, `.plot()`, `.dependencies()`, `.to_thought_anchors()`.

        reference: the right answer (a string or a BenchProblem); default: the benchmark problem a
            `bench.run` trace records. options (`mimo_lab.resampling.sentence_importance`): seed, kind
            ("sentence" or "thought_anchors" chunks), sentences (a subset), forced, forced_samples,
            forced_answer (default: the card's), forced_tokens, similarity ("words", "minilm" or a callable),
            threshold (0.8), kl_alpha, adaptive (stop a set once its accuracy's 95% interval is this narrow),
            max_new_tokens (default: the trace's remaining budget), backend ("transformers" or "vllm"),
            batch_size, out (a folder: resumable), progress, and sampling settings (default: the card's
            recommended sampling).
        """
        from mimo_lab.resampling import sentence_importance

        return sentence_importance(self, trace, samples=samples, reference=reference, **options)

    def answer_convergence(self, trace: Trace, *, samples: int = 16, every="sentence", **options):
        """After each prefix of the thinking (every sentence, or every N tokens), force the end of thinking and
        sample the answer `samples` times: P(final answer) and P(correct) along the trace, where it settles
        and how many tokens came after (`AnswerConvergence`). options as `sentence_importance`'s, and
        settle (0.9: the share of forced answers that must give the final answer from there on)."""
        from mimo_lab.resampling import answer_convergence

        return answer_convergence(self, trace, samples=samples, every=every, **options)

    def resilience(self, trace: Trace, *, samples: int = 8, rounds: int = 3, **options):
        """Thought Branches' resilience: remove sentence i (resample from before it), and while a sentence
        like it comes back, resample from there again, up to `rounds` times (`Resilience`). options:
        sentences, reference, similarity, threshold, seed, kind, max_new_tokens, backend, batch_size, out,
        progress, sampling settings."""
        from mimo_lab.resampling import resilience

        return resilience(self, trace, samples=samples, rounds=rounds, **options)

    # ------------------------------------------------------------------ benchmarks
    def bench(self, suite, *, samples: int = 1, out=None, **options):
        """Generate, grade and classify `samples` samples per problem of `suite`; returns a resumable `Run`
        (the same as `mimo_lab.bench.run(lab, suite, ...)`, which documents every option)."""
        from mimo_lab.bench.run import run

        return run(self, suite, samples=samples, out=out, **options)


# ----------------------------------------------------------------------------- load


def _env_threads() -> int | None:
    env = os.environ.get("MIMO_LAB_THREADS")
    if not env:
        return None
    try:
        return check_int("MIMO_LAB_THREADS", int(env), minimum=1)
    except ValueError as err:
        raise ValueError(f"MIMO_LAB_THREADS={env!r} is not accepted: a whole number >= 1 is") from err


_threads_set_by_load: int | None = None  # what the last small-model load() set, to undo it for a large one


def choose_threads(threads: int | None, model, device: torch.device | None) -> int:
    """CPU threads for torch: `threads`, else $MIMO_LAB_THREADS, else 1 for a model under 50M parameters
    on the CPU (more threads only add synchronisation there, and under CPU contention torch's default
    made MiMo-nano's generation 10-20x slower), else the current setting: a large model keeps what the
    user set with `torch.set_num_threads`, and gets torch's default back only where an earlier load() of
    a small model lowered it."""
    threads = _env_threads() if threads is None else threads
    if threads is not None:
        return threads
    params = sum(p.numel() for p in model.parameters())
    on_cpu = device is not None and device.type == "cpu"
    if on_cpu and params < SMALL_MODEL_PARAMS:
        return 1
    current = torch.get_num_threads()
    return _TORCH_DEFAULT_THREADS if current == _threads_set_by_load else current


def plan_device_map(config, max_memory: dict, dtype=torch.bfloat16) -> dict[str, int | str]:
    """Where each module of a model would go across devices (accelerate's planner, nothing loaded).

    config: a model config (e.g. `MiMoConfig.from_pretrained(folder)`); max_memory: e.g.
    {0: "70GiB", 1: "70GiB", "cpu": "100GiB"}. Decoder layers and the MTP layer are never split.
    """
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = (MiMoForCausalLM(config) if isinstance(config, MiMoConfig)
                 else AutoModelForCausalLM.from_config(config, trust_remote_code=False))
    no_split = list({type(layer).__name__ for layer in model.model.layers} | {"MiMoMTPLayer"})
    return dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype))


def _placement(device, device_map) -> tuple[torch.device | None, dict | str | None]:
    """(single device, or a device map for several): "auto" spreads over every GPU when there are two or more."""
    if device_map is not None:
        if device not in (None, "auto"):
            raise ValueError(f"give device or device_map, not both (device={device!r})")
        return None, device_map
    if (device is None or device == "auto") and torch.cuda.device_count() > 1:
        return None, "auto"
    return resolve_device(device), None


def load(name_or_path: str | os.PathLike | None = None, *, device: str | None = None, dtype=None,
         revision: str | None = None, device_map: dict | str | None = None, remote: bool | str = False,
         weights: bool = True, threads: int | None = None) -> Lab:
    """Load a model into a Lab. No argument: MiMo-nano on the CPU, offline.

    name_or_path: a local checkpoint folder, or a hub id (read from the local cache when offline).
    device: "auto" (every GPU when there are several, one GPU, else the CPU), "cpu", "cuda", "cuda:N".
    dtype: "auto" (bf16 on a GPU, fp32 on the CPU), "float32", "bfloat16", "float16".
    device_map: an accelerate device map (module name -> GPU index, "cpu" or "disk") to shard by hand.
    remote: True runs every trace on NDIF (nnsight remote execution; set NDIF_API_KEY), "local"
        simulates that round trip on this machine; False (default) runs here.
    weights: False loads config, tokenizer and card only (for the vLLM backend, which loads its own).
    threads: torch's CPU threads (process-wide; default $MIMO_LAB_THREADS, else 1 for a model under 50M
        parameters on the CPU; a larger model keeps the current setting, or torch's default where an
        earlier load() lowered it); shown in the Lab's repr.
    """
    from transformers import AutoTokenizer, GenerationConfig

    if name_or_path is not None and not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(f"name_or_path={name_or_path!r} ({type(name_or_path).__name__}) is not accepted: a "
                        "checkpoint folder, a hub id ('owner/name') or None (MiMo-nano) is")
    threads = check_int("threads", threads, minimum=1, none_ok=True)
    _env_threads()  # a bad $MIMO_LAB_THREADS is refused before anything loads
    weights = check_bool("weights", weights)
    if remote not in (False, True, "local"):
        raise ValueError(f"remote {remote!r} is not allowed: use False, True (NDIF) or 'local' (simulated)")
    torch_device, map_spec = _placement(device, device_map)
    if torch_device is None:  # sharded: bf16 by default when any part sits on a GPU
        on_gpu = map_spec == "auto" or any(isinstance(v, int) or str(v).startswith("cuda") for v in map_spec.values())
        dtype_device = torch.device("cuda" if on_gpu else "cpu")
    else:
        dtype_device = torch_device
    torch_dtype = resolve_dtype(dtype, dtype_device)
    is_nano = name_or_path is None or str(name_or_path).lower() in NANO_ALIASES
    if is_nano:
        folder, name = NANO_CHECKPOINT, NANO_NAME
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"MiMo-nano's weights are missing from {folder}: reinstall mimo_lab or run "
                                    "`mimo-lab nano train --out DIR` and load DIR")
    else:
        name = str(name_or_path)
        folder = resolve_checkpoint(name, revision)
    try:
        config_dict = json.loads((folder / "config.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(folder / 'config.json')!r} is corrupt: it is not JSON ({err})") from err
    if not isinstance(config_dict, dict):
        raise ValueError(f"{str(folder / 'config.json')!r} is corrupt: it holds a {type(config_dict).__name__}, "
                         "not a JSON object")
    model_type = config_dict.get("model_type")
    config_class, model_class = _model_class(model_type, folder)

    config = config_class.from_pretrained(folder, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    has_weights = weights and remote is not True
    if not has_weights:
        from accelerate import init_empty_weights

        with init_empty_weights():  # no weights here: NDIF (or vLLM) holds them
            model = (model_class(config) if model_class is MiMoForCausalLM
                     else model_class.from_config(config, trust_remote_code=False))
        model.config._attn_implementation = "sdpa"
        model.config._name_or_path = str(folder)  # where the weights are (vLLM loads them from there)
        model.eval()
    else:
        check_shards(folder)
        extra = {}
        if map_spec is not None:
            extra["device_map"] = map_spec
            if isinstance(map_spec, dict) and "disk" in map_spec.values():
                import tempfile

                extra["offload_folder"] = tempfile.mkdtemp(prefix="mimo-lab-offload-")
        model = model_class.from_pretrained(folder, config=config, dtype=torch_dtype, attn_implementation="sdpa",
                                            trust_remote_code=False, **extra)
        if map_spec is None:
            model.to(torch_device)
        model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        generation_config = GenerationConfig.from_pretrained(folder)
    except OSError:
        generation_config = None
    # a folder written by `mimo-lab nano train` (the shipped one or a retrain) is a MiMo-nano
    trained_nano = is_nano or (folder / "train_settings.json").is_file()
    card = NANO_CARD if trained_nano else card_for(name, config, tokenizer, generation_config)
    global _threads_set_by_load
    chosen = choose_threads(threads, model, torch_device if has_weights else None)
    if chosen != torch.get_num_threads():
        torch.set_num_threads(chosen)
        _threads_set_by_load = chosen
    return Lab(model, tokenizer, card, name, revision, remote=remote, has_weights=has_weights, threads=chosen)

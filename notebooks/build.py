"""Writes the notebooks from the cell sources below (run: python notebooks/build.py).

The .ipynb files are what users open and what the tests execute; this file keeps their sources
reviewable as code. Every notebook starts with a `parameters` cell holding MODEL.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).parent


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None):
    cell = nbformat.v4.new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


PARAMS_NOTE = ("`MODEL = None` is MiMo-nano (CPU, seconds). Set `MODEL = \"XiaomiMiMo/MiMo-7B-RL\"` on a GPU and "
               "the same cells run on the real model.")

NOTEBOOKS = {
    "01_reasoning_traces.ipynb": [
        md(f"""
# 01 · Reasoning traces, token by token

Generate a trace, read its `<think>` part and answer, and look at every token: its log-prob, the entropy
of the distribution it was sampled from, the alternatives, and (for MiMo) whether the MTP head's guess for
the token after next came true. Then split the thinking into labelled sentences, find the forking tokens,
contrast a correct and a wrong trace, and find where two samples of one prompt part ways.

{PARAMS_NOTE}
"""),
        code("""
MODEL = None                      # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
PROMPT = "What is 4587 + 2698?"   # within MiMo-nano's training difficulty
HARD_PROMPT = "What is 48213 + 39674?"  # beyond it (5 digits)
HARD_ANSWER = "87887"
SAMPLES = 8
SEED = 0
TEMPERATURE = 0.6                 # for the sampled traces (MiMo's recommendation)
""", tags=["parameters"]),
        code("""
import mimo_lab

lab = mimo_lab.load(MODEL)
lab, lab.card.default_decoding, lab.card.recommended_sampling
"""),
        md("## One trace\n`generate` uses the card's default decoding (`card.default_decoding`): MiMo samples at temperature 0.6, top-p 0.95; MiMo-nano decodes greedily unless given a temperature. Anything that draws further samples (resampling, benchmarks with several samples) uses `card.recommended_sampling`. Every trace records what it used in `trace.sampling`, with its source."),
        code("""
trace = lab.generate(PROMPT, seed=SEED)
print(trace.thinking)
print("\\nanswer:", trace.answer, "| final answer:", trace.final_answer, "| finish:", trace.finish_reason)
trace.sampling
"""),
        md("Per-token analytics, recorded while generating (no second pass). The index is the token's *position*: the prompt's tokens come first (`trace.prompt_length` of them), so the first generated token is at `trace.prompt_length`. Every mimo_lab call that reports or takes a position uses this one convention."),
        code("trace.tokens.head(12)"),
        md("The text coloured by entropy (hover a token for its alternatives):"),
        code("trace.token_view('entropy')"),
        code("trace.plot()"),
        md("## Sentences, labels and markers\nTransparent rules assign the 8 step labels; `segment.RuleLabeller().to_frame()` lists them, and any callable can replace them."),
        code("trace.sentences.to_frame()"),
        code("trace.sentences.plot()"),
        md("## Forking tokens\nThe top 20% of tokens by entropy: where the trace could have gone another way. Their positions go unchanged into other calls: resample from the strongest fork, or read the activations there."),
        code("trace.forking_tokens().head(10)"),
        code("""
position = int(trace.forking_tokens().index[0])
branch = lab.resample(trace, position, seed=SEED)   # the tokens before `position` kept, the rest sampled again
acts = lab.capture(trace, sites="resid", layers=[0])
print("fork at position", position, repr(trace.tokens.loc[position, "text"]), "| captured row:", repr(acts.token_texts[position]))
print("resampled with", branch.sampling, "| final answer:", branch.final_answer)
branch.divergence(trace)
"""),
        md("## The MTP head\nMiMo's multi-token-prediction head guesses token t+2 at every position. Where does it agree with what was generated?"),
        code("""
if trace.mtp is not None:
    print(f"MTP t+2 accuracy over this trace: {trace.mtp_accuracy():.1%}")
    display(trace.token_view("mtp_target_prob"))
else:
    print("this model has no MTP head")
"""),
        md("## A correct and a wrong trace\nSample the same harder prompt several times and compare what the right and wrong samples look like."),
        code("""
samples = lab.generate([HARD_PROMPT] * SAMPLES, seed=SEED + 100, temperature=TEMPERATURE)
correct = [t for t in samples if t.final_answer == HARD_ANSWER]
wrong = [t for t in samples if t.final_answer != HARD_ANSWER]
print(f"{len(correct)} correct, {len(wrong)} wrong of {len(samples)}")
for name, group in (("correct", correct), ("wrong", wrong)):
    if group:
        mean_entropy = sum(float(t.entropies.mean()) for t in group) / len(group)
        print(f"{name:8s} mean entropy {mean_entropy:.3f} nats, mean length {sum(len(t) for t in group) / len(group):.0f} tokens")
"""),
        code("""
example = wrong[0] if wrong else samples[0]
print("final answer:", example.final_answer, "(reference", HARD_ANSWER + ")")
example.token_view("logprob")
"""),
        md("## Where two samples fork"),
        code("""
pair = (correct[0], wrong[0]) if correct and wrong else (samples[0], samples[1])
fork = pair[0].divergence(pair[1])   # the position where they first differ, and the steps side by side
fork
"""),
        code("fork.fork"),
        code("fork.plot()"),
        md("## Save, reopen, regenerate\nA trace is JSON + safetensors, with the model, sampling settings and seed needed to regenerate it."),
        code("""
import tempfile, pathlib
folder = pathlib.Path(tempfile.mkdtemp()) / "trace"
trace.save(folder)
reopened = mimo_lab.Trace.load(folder)
again = lab.regenerate(reopened)
print(sorted(p.name for p in folder.iterdir()), "| regenerated identically:", again.text == trace.text)
"""),
        md("## Streaming"),
        code("""
for token in lab.stream(PROMPT, seed=SEED, max_new_tokens=60):
    print(token.text, end="")
print("\\n\\nthe streamed trace:", lab.last_trace, "| MTP t+2 accuracy:", lab.last_trace.mtp_accuracy())
"""),
    ],
    "02_attention_patterns.ipynb": [
        md(f"""
# 02 · Inside a trace: activations, lenses, attention, interventions

Everything here works on traces of any length: capture runs in chunks with a KV cache, the logit lens keeps
only the top-k per layer and position, and attention is recomputed from post-RoPE queries and keys one head and
one block of queries at a time (sdpa stays on; all heads' n x n never exist at once).

{PARAMS_NOTE}
"""),
        code("""
MODEL = None                       # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
PROMPT = "What is 4587 + 2698?"
LAYER = -1                         # a layer to look at (negative counts from the end)
SEED = 0
TEMPERATURE = 0.6                  # for the sampled traces
""", tags=["parameters"]),
        code("""
import re

import mimo_lab

lab = mimo_lab.load(MODEL)
trace = lab.generate(PROMPT, greedy=True)
start = trace.prompt_length                 # the position of the first generated token (prompt tokens come first)
print(trace.thinking)
"""),
        md("## Activations\nNamed sites (`resid`, `attn_out`, `mlp_out`) per layer. Row p of every tensor is position p: the prompt's tokens first, then the trace's, the same positions every probe uses. Saved as safetensors + JSON."),
        code("""
acts = lab.capture(trace, sites=("resid", "attn_out", "mlp_out"), layers=[-1, 0])   # any order, each layer once
print(acts)
acts.plot("resid", start, len(acts.positions))
"""),
        md("## Logit lens\nEach layer's residual, unembedded: the top guess per position, coloured by the probability of the token that actually came next."),
        code("""
lens = lab.logit_lens(trace, k=3)
lens.plot(start, min(start + 40, len(lens.positions)))
"""),
        code("""
position = int(trace.forking_tokens().index[0])   # a position from the trace, unchanged: the lens, the activations and attention share them
print(repr(lens.token_texts[position]), acts["resid"][:, position].norm(dim=-1))
lens.at(position).query("rank == 0")
"""),
        md("## The MTP head: where is it unsure?\nMiMo's MTP head guesses the token at p+2 from every position p; its accuracy by step label shows which kinds of steps are predictable two tokens ahead. At slot 0 the serving engines (vLLM, SGLang) zero the token embedding; the lens follows the model card's convention (MiMo-7B: zeroed; MiMo-nano: unmasked, as it was trained) unless `zero_first_embedding=` says otherwise."),
        code("""
if lab.has_mtp:
    mtp = lab.mtp_lens(trace)
    print(mtp)
    display(mtp.by_label())
    display(mtp.to_frame().sort_values("target_prob").head(8)[["token", "guess", "guess_prob", "target", "target_prob", "label"]])
    display(mtp.plot())
"""),
        md("## Attention patterns\nToken level for a window (checked against eager attention in the tests), sentence level for the whole trace. Positions count the prompt's tokens first, then the generated ones: the trace's first token is at `trace.prompt_length`."),
        code("""
layer = LAYER % lab.num_layers
att = lab.attention(trace, layer)
att.plot(head=0, start=start, end=min(start + 120, start + len(trace)))
"""),
        code("""
sentences = att.by_sentence()
sentences.plot()
"""),
        md("## Which heads fetch the digits being combined?\nWhen the trace writes a column step such as `Ones: 7 + 8`, the operand digits come from the prompt. Score every head by the attention mass from those written digits back to the digits of the prompt."),
        code("""
column = re.compile(r"(\\d) \\+ (\\d)")
queries = sorted({trace.token_at(m.start(g)) for m in column.finditer(trace.text) for g in (1, 2)})  # positions
prompt_tokens = lab.tokenizer.convert_ids_to_tokens(trace.prompt_ids.tolist())
keys = [i for i, t in enumerate(prompt_tokens) if t.strip().isdigit()]
print(f"{len(queries)} written operand digits, {len(keys)} prompt digits")
digit_heads = lab.attention_between(trace, queries, keys, what="attention from written operand digits to the prompt's digits")
display(digit_heads.top(5))
digit_heads.plot()
"""),
        md("## Receiver heads and attention sinks\nThought Anchors' receiver heads: heads whose attention concentrates on a few sentences (high kurtosis of the attention each reasoning sentence receives from the reasoning sentences at least `proximity` later; the prompt and the answer are left out, as in the paper). The paper uses proximity 4 and the top 20 heads; MiMo-nano's traces are short, so proximity 2 here."),
        code("""
samples = lab.generate(["What is 4587 + 2698?", "What is 23 * 41?", "Sort these numbers: 51, 82, 20, 30, 67"], seed=SEED)
receivers = lab.receiver_heads(samples, proximity=2)
display(receivers.top(5))
receivers.plot()
"""),
        md("## Interventions\n**Activation patching**: the ones digit of the first operand changes the first column's sum. Which layer and position carry it?"),
        code("""
prefix = lab.format_prompt("What is 4587 + 2698?") + "<think>\\nI add 4587 and 2698 column by column, from the right.\\nOnes: 7 + 8 = "
corrupted = lab.format_prompt("What is 4586 + 2698?") + "<think>\\nI add 4586 and 2698 column by column, from the right.\\nOnes: 6 + 8 = "
patching = lab.activation_patching(prefix, corrupted, "15")
print(patching)
patching.plot()
"""),
        md("**Steering**: the difference of means between backtracking sentences and the others, added to one layer's output inside `with lab.steer(vector, scale):` (and nowhere else). `scale` counts multiples of that layer's mean residual norm over the examples' tokens (`vector.norm`)."),
        code("""
pool = lab.generate(["What is 17 + 28?", "What is 78 + 87?", "What is 478 + 387?", "Multiply 87 by 8."] * 2,
                    seed=SEED + 1, temperature=TEMPERATURE)
backtracking = [s.stripped for t in pool for s in t.sentences if "backtracking" in s.markers]
others = [s.stripped for t in pool for s in t.sentences if not s.markers][:40]
print(len(backtracking), "backtracking sentences,", len(others), "others")
if backtracking and others:
    vector = lab.steering_vector(backtracking, others, layer=lab.num_layers // 2)
    print(vector)
    prompts = ["What is 17 + 28?", "What is 78 + 87?", "What is 478 + 387?", "What is 58 + 37?"] * 2
    for scale in (-4.0, 0.0, 4.0):
        with lab.steer(vector, scale):
            traces = lab.generate(prompts, seed=SEED, temperature=TEMPERATURE)
        print(f"scale {scale:+.1f}: {sum('Wait' in t.thinking for t in traces)}/{len(traces)} traces backtrack, "
              f"{sum(t.final_answer is not None for t in traces)} give an answer")
"""),
        md("**Attention suppression**: mask all attention to one sentence from everything after it, and see which later sentences change (KL of their next-token distributions; per sentence, the mean of log(KL + 1e-9) over its positions). The default KL is exact (the model's own distributions, full vocabulary); `kl=\"thought_anchors\"` uses the paper's settings (T 0.6, the union of each side's top-p 0.9999 tokens, at most 100) for numbers comparable with theirs."),
        code("""
suppressed = lab.suppress_sentence(trace, 1)
display(suppressed.to_frame().head(10))
suppressed.plot()
"""),
        code("""
lab.suppression_matrix(trace, kl="thought_anchors").plot()
"""),
    ],
    "03_benchmark_failures.ipynb": [
        md(f"""
# 03 · Benchmark failures: where the model fails, and why

Run a suite (every sample graded and appended to `samples.jsonl` as it finishes; re-running resumes), then
look at accuracy by difficulty, the failure classes (wrong answer, truncated in/after thinking, repetition loop,
format error, no answer, grader error), lengths, and open any sample's trace. A sample cut off inside its
thinking has no answer, so it is never graded correct. Reading a run never changes its files, so this notebook
can read a run that `mimo-lab bench` is still writing.

{PARAMS_NOTE} For MATH-500 or AIME set `SUITE = "math500"` (through `datasets`) or a local file.
"""),
        code("""
MODEL = None            # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
SUITE = "nano"          # nano, math500, aime24, aime25, gsm8k, or a .jsonl/.csv/.parquet path
LIMIT = None            # N problems only (None: all)
SELECT = "stratified"   # with LIMIT: round-robin over family x level, seeded; "head": the first N in file order
SAMPLES = 2             # samples per problem (1: the card's default decoding; more: its recommended sampling)
MAX_NEW_TOKENS = None   # None: the model card's
OUT = None              # a folder to keep the run in (None: a temporary one)
""", tags=["parameters"]),
        code("""
import tempfile

import mimo_lab
from mimo_lab import bench

lab = mimo_lab.load(MODEL)
suite = bench.nano_suite(per_cell=4) if SUITE == "nano" else bench.load_suite(SUITE)
out = OUT or tempfile.mkdtemp(prefix="mimo-bench-")
sampling = {} if MAX_NEW_TOKENS is None else {"max_new_tokens": MAX_NEW_TOKENS}
result = lab.bench(suite, samples=SAMPLES, limit=LIMIT, select=SELECT, out=out, **sampling)
result
"""),
        md("What the run used is recorded with it (and with every sample): the decoding, the problem selection."),
        code("""
{k: result.settings[k] for k in ("decoding", "sampling", "selection", "problems")}
"""),
        code("""
summary = result.summary
{k: summary[k] for k in summary if k.startswith(("pass", "maj", "avg", "categories"))}
"""),
        code("""
explorer = result.explore()
explorer.accuracy()
"""),
        code("explorer.accuracy_figure()"),
        code("explorer.failure_figure()"),
        code("explorer.length_figure()"),
        md("## The failures, one click from their traces"),
        code("""
failures = explorer.failures()
failures.head(10)
"""),
        code("""
if len(failures):
    worst = failures.iloc[0]
    print(worst.category, "| got", worst.extracted_answer, "| expected", worst.reference_answer, "|", worst.evidence)
    display(explorer.trace_view(worst.problem_id, int(worst.sample_index)))
"""),
        md("## Comparing two settings\nThe same suite with greedy decoding: which problems flip, is the difference significant (McNemar), and how do failure classes move?"),
        code("""
greedy = lab.bench(suite, samples=SAMPLES, limit=LIMIT, select=SELECT,
                   out=tempfile.mkdtemp(prefix="mimo-bench-greedy-"), greedy=True, **sampling)
comparison = bench.compare_runs(result, greedy)
display(comparison.summary())
comparison.plot()
"""),
        code("comparison.flips.head(10)"),
    ],
    "00_quickstart.ipynb": [
        md(f"""
# 00 · Quickstart: every capability once

A tour in a dozen cells: load a model, generate a reasoning trace and look at it token by token, one attention
view, a small benchmark with its failures, and the playground. The deeper notebooks:
[01 reasoning traces](01_reasoning_traces.ipynb) · [02 attention and probing](02_attention_patterns.ipynb) ·
[03 benchmark failures](03_benchmark_failures.ipynb) · [04 playground](04_playground.ipynb) ·
[05 traces from anywhere](05_thought_anchors.ipynb) · [06 which sentence mattered](06_which_sentence_mattered.ipynb).

{PARAMS_NOTE}
"""),
        code("""
MODEL = None   # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
PROMPT = "What is 128 + 367?"
""", tags=["parameters"]),
        code("""
import mimo_lab
from mimo_lab import bench
from mimo_lab.widgets import Playground

lab = mimo_lab.load(MODEL)
lab
"""),
        code("""
trace = lab.generate(PROMPT, greedy=True)
print(trace.thinking, "\\n\\nanswer:", trace.answer, "| final answer:", trace.final_answer)
"""),
        code("trace.token_view('entropy')"),
        code("trace.plot()"),
        code("trace.sentences.to_frame()"),
        code("lab.attention(trace, layer=lab.num_layers - 1).by_sentence().plot()"),
        code("""
import tempfile
suite = bench.nano_suite(per_cell=2) if MODEL is None else bench.load_suite("math500", limit=10)
result = lab.bench(suite, samples=1, out=tempfile.mkdtemp(), greedy=True)
result.explore().failure_figure()
"""),
        code("result.explore().failures().head()"),
        code("""
playground = Playground(lab)
playground
"""),
    ],
    "04_playground.ipynb": [
        md(f"""
# 04 · Playground

Type a prompt, set the sampling knobs, press **Generate** and watch the tokens stream into the thinking and
answer panes; **Stop** ends it at once. When the trace is done its tokens appear coloured by entropy (or
log-prob / MTP agreement): click one to see its alternatives and its logit lens, then **Resample from here**
to keep the trace up to that token and sample the rest again. The history compares any two runs.

{PARAMS_NOTE}
"""),
        code("""
MODEL = None   # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
PROMPT = "What is 478 + 387?"
""", tags=["parameters"]),
        code("""
import mimo_lab
from mimo_lab.widgets import Playground, TraceViewer

lab = mimo_lab.load(MODEL)
playground = Playground(lab)
playground.prompt.value = PROMPT
playground
"""),
        md("The same thing from code: `run` generates synchronously and returns the Trace (the widget above shows it too). Its settings apply to that call only; anything not given is the card's default decoding, whatever the knobs or an earlier call said."),
        code("""
trace = playground.run(PROMPT, seed=0, temperature=0.6)
print(trace.final_answer, trace.finish_reason, len(trace), "tokens")
"""),
        code("""
viewer = TraceViewer(trace, lab)
viewer.select(trace.prompt_length + min(10, len(trace) - 1))   # a position: what clicking the 11th generated token does
viewer
"""),
        code("""
again = playground.run(PROMPT, seed=1, temperature=1.0)
playground.compare()
print(len(playground.history), "runs in the history")
"""),
    ],
    "05_thought_anchors.ipynb": [
        md("""
# 05 · Traces from anywhere: Thought Anchors' data, scored, labelled and written back

[Thought Anchors](https://arxiv.org/abs/2506.19143) (Bogdan et al. 2025) cut reasoning traces of
DeepSeek-R1-Distill models into sentence *chunks*, tagged each with a function (problem setup, plan, fact
retrieval, computation, uncertainty management, consolidation, self-checking, final answer) by an LLM, and
measured each chunk's importance by resampling. Twenty of their traces are in `shared/data/thought_anchors`.

Here one of them is read into a `Trace`, **scored** by the loaded model (a teacher-forced pass: the model
reads a text it did not write and reports, per token, what it would have expected), split into their chunks,
labelled by our two labellers next to theirs, looked at with our sentence-attention view next to their
importances, written back in their format, and read by two models at once.

**Read the numbers with care on MiMo-nano.** Nano was trained on ~200-token arithmetic traces and knows no
English prose or competition mathematics; an R1 trace is thousands of nano tokens. What this notebook shows on
nano is the machinery. Set `MODEL = "XiaomiMiMo/MiMo-7B-RL"` on a GPU for numbers that mean something (and
`BASE = "XiaomiMiMo/MiMo-7B-Base"` for the base-vs-RL comparison at the end).
"""),
        code("""
MODEL = None     # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
BASE = None      # a second model with the same tokenizer, e.g. "XiaomiMiMo/MiMo-7B-Base" (None: an ablated copy of MODEL)
TA_ROOT = None   # the folder of Thought Anchors problem folders (None: shared/data/thought_anchors beside the project)
TRACE = "deepseek-r1-distill-llama-8b__incorrect_base_solution__problem_2189"   # the shortest of the twenty
LAYER = -1       # the layer whose attention is compared with their importances
""", tags=["parameters"]),
        code("""
from pathlib import Path

import pandas as pd
import plotly.express as px

import mimo_lab
from mimo_lab import thought_anchors as ta
from mimo_lab.labellers import LearnedLabeller, cohen_kappa
from mimo_lab.segment import RuleLabeller

root = Path(TA_ROOT) if TA_ROOT else Path(mimo_lab.__file__).resolve().parents[2] / "shared" / "data" / "thought_anchors"
assert (root / TRACE).is_dir(), f"no Thought Anchors folder {root / TRACE}: set TA_ROOT to the folder holding their problem folders"
lab = mimo_lab.load(MODEL)
text_only = ta.read(root / TRACE)            # no model: the text, its chunks, tags and importances
trace = ta.read(root / TRACE, lab)           # the same, scored by the model
print(text_only)
print(trace)
print(trace.meta["scored"]["tokens"], "·", len(trace), "tokens of", lab.name, "for", len(trace.text), "characters")
ta.chunks(trace).head()
"""),
        md("""
## What scoring a foreign trace means
`lab.score` (here through `ta.read(folder, lab)`) gives the text every per-token number `generate` records:
the log-prob of each token under the model, the entropy of the distribution the model would have sampled it
from (at the card's recommended settings, recorded in `trace.sampling`), the model's top alternatives. It
does not make the text the model's own: compare how surprised the model is by this trace and by one it wrote.
"""),
        code("""
own = lab.generate("What is 4587 + 2698?", seed=0, preset="recommended")
mine = lab.score(own)                        # a self-generated trace scored: the same numbers generate recorded
print(f"{lab.name} on its own trace: mean log-prob {float(mine.logprobs.mean()):.3f} nats/token, "
      f"on the R1 trace: {float(trace.logprobs.mean()):.3f}")
print("scored == generated:", bool((mine.logprobs - own.logprobs).abs().max() < 1e-4))
trace.plot(kind="thought_anchors")
"""),
        md("""
## Their chunks, three label sets
`trace.segments("thought_anchors")` cuts the text exactly as their splitter does (all 2,338 chunks of the
twenty traces are reproduced). Their LLM's tags, our learned labeller's (trained on these twenty traces, so
on this one it is optimistic: its honest figure is the cross-validated one, printed below) and the rule
labeller's, side by side.
"""),
        code("""
import json
chunks = ta.chunks(trace)
learned = LearnedLabeller()
side = pd.DataFrame({"chunk": chunks["chunk"].str.slice(0, 70), "theirs": chunks["tag"],
                     "learned": learned.label_trace(trace),
                     "rules": trace.segments("thought_anchors", labeller=RuleLabeller()).labels})
print("kappa cross-validated over problems (never seen):",
      {name: figures["kappa"] for name, figures in learned.model.settings["cross_validation"].items()})
print(f"on this trace: kappa learned {cohen_kappa(side.theirs, side.learned):.2f}, rules {cohen_kappa(side.theirs, side.rules):.2f}")
side.head(20)
"""),
        md("""
## Our sentence attention next to their importances
Thought Anchors' *receiver* view: the attention each chunk receives from chunks at least 4 later
(`vertical_scores`, mean over the layer's heads), next to their counterfactual importance (how much
resampling from the chunk changes the answer distribution). On MiMo-nano the attention pattern over an R1
trace reflects nothing of its reasoning, so no correlation is expected; on MiMo-7B this is the comparison the
paper makes (receiver heads attend to the chunks that matter).
"""),
        code("""
att = lab.attention(trace, LAYER)
sentence_att = att.by_sentence(kind="thought_anchors")
chunks["received_attention"] = sentence_att.vertical_scores(proximity=4).nanmean(0).numpy()
rho = chunks[["received_attention", "counterfactual_importance_kl"]].corr(method="spearman").iloc[0, 1]
print(f"Spearman correlation over {chunks.received_attention.notna().sum()} chunks: {rho:.2f}")
px.scatter(chunks, x="counterfactual_importance_kl", y="received_attention", color="tag", hover_data=["chunk_idx"],
           title=f"{lab.name}, layer {LAYER % lab.num_layers}: attention received vs their importance")
"""),
        md("""
## Written back in their format
`ta.write` writes a problem folder (`problem.json`, `base_solution.json`, `chunks_labeled.json`) that their
website and scripts read: here with our learned labeller's tags and the attention each chunk receives as an
extra field. A folder read and written back unchanged holds the same JSON (tested on all twenty).
"""),
        code("""
import tempfile
out = ta.write(trace, Path(tempfile.mkdtemp()) / TRACE, labeller=learned.for_trace(trace),
               values={"received_attention": chunks["received_attention"].fillna(0).tolist()})
records = json.loads((out / "chunks_labeled.json").read_text())
print(sorted(p.name for p in out.iterdir()))
records[3]
"""),
        md("""
## Two models on one trace
`compare.model_diff(lab_a, lab_b, trace)`: per-token log-probs under each, KL both ways, the tokens where they
disagree most, per-chunk aggregates and per-layer residual differences. Its use case is MiMo-7B-Base reading
MiMo-7B-RL's trace (where did RL change what the model expects?). With `BASE = None` the second model is the
loaded one with layer 1's MLP switched off, a stand-in that shows what the result holds.
"""),
        code("""
import copy
import torch
from mimo_lab.compare import model_diff

if BASE is None:
    ablated = copy.deepcopy(lab.model)
    torch.nn.init.zeros_(ablated.model.layers[1].mlp.down_proj.weight)
    other = mimo_lab.Lab(ablated, lab.tokenizer, lab.card, lab.name + " (layer 1 MLP off)")
else:
    other = mimo_lab.load(BASE)
diff = model_diff(other, lab, own)           # a = the other model, b = the one that wrote the trace
print(diff)
display(diff.disagreements(5)[["position", "token", "logprob_a", "logprob_b", "kl_ab", "context"]])
display(diff.by_layer())
diff.plot()
"""),
    ],
    "06_which_sentence_mattered.ipynb": [
        md(f"""
# 06 · Which sentence mattered: resampling a failing trace

Thought Anchors' black-box half (Bogdan et al. 2025): for every reasoning sentence i, resample the rest of the
trace from just before it (sentence i regenerated) and from just after it (the rollouts of sentence i+1), grade
every rollout, and measure how the answer distribution moves. Here on a benchmark sample the model got wrong:
which sentence made it fail? Then the same trace through the attention-based view (receiver heads, attention
suppression): where do the two agree? Also: the answer forced after every prefix (when was the answer settled?)
and the resilience of the culprit (does its content come back when it is removed?).

{PARAMS_NOTE} The paper draws 100 rollouts a sentence; `SAMPLES = 100` on a GPU (`backend="vllm"` shares
prefixes through vLLM's prefix cache). Runs are resumable: give `OUT` a folder and run the cell again after a kill.
"""),
        code("""
MODEL = None     # MiMo-nano; or "XiaomiMiMo/MiMo-7B-RL"
SAMPLES = 12     # rollouts per sentence (Thought Anchors: 100)
LIMIT = 12       # benchmark problems (4 samples each) to look for a failure in
OUT = None       # a folder keeps the rollouts (resumable); None: a temporary one
""", tags=["parameters"]),
        code("""
import tempfile

import mimo_lab
from mimo_lab import bench

lab = mimo_lab.load(MODEL)
if MODEL is None:  # level 3, the edge of MiMo-nano's training: sampled, some traces slip and go on wrong
    suite = bench.nano_suite(per_cell=2, levels=(3,), families=("addition", "subtraction", "multiplication"))
else:
    suite = bench.load_suite("math500", limit=LIMIT)
out = OUT or tempfile.mkdtemp(prefix="mimo-importance-")
run = lab.bench(suite, samples=4, out=f"{out}/bench", limit=LIMIT, progress=False)  # the card's sampling
failures = run.explore().failures()
wrong = failures[failures.category == "wrong_answer"]
pick = (wrong if len(wrong) else failures).iloc[0] if len(failures) else run.frame.iloc[0]
trace = run.trace(pick.problem_id, int(pick.sample_index))
print(pick.problem_id, "| got", pick.extracted_answer, "| expected", pick.reference_answer)
print(trace.thinking)
"""),
        md("""
## Resampling importance
`lab.sentence_importance(trace)` grades rollouts against the benchmark problem the trace records. Per sentence:
`accuracy` (of the rollouts resampled from it), `resampling_importance_accuracy` (accuracy with the sentence
kept minus resampled), the counterfactual versions (only rollouts whose new sentence differs from the original),
the forced-answer versions, and KL divergences between the answer distributions; each with a bootstrap interval.
"""),
        code("""
importance = lab.sentence_importance(trace, samples=SAMPLES, out=f"{out}/importance", progress=False)
frame = importance.to_frame()
frame[["text", "label", "accuracy", "resampling_importance_accuracy", "counterfactual_importance_accuracy",
       "counterfactual_importance_kl", "forced_importance_accuracy", "different_trajectories_fraction"]]
"""),
        code("importance.plot('resampling_importance_accuracy')"),
        code("""
# where it went wrong: the sentence after which the rollouts' accuracy fell the most
culprit = int(frame["resampling_importance_accuracy"].idxmin())
row = frame.loc[culprit]
print(f"sentence {culprit}: {row.text!r}")
print(f"accuracy resampled from it {row.accuracy:.2f} -> with it kept "
      f"{row.accuracy + row.resampling_importance_accuracy:.2f}")
"""),
        code("importance.plot_dependencies()"),
        md("""
## When was the answer settled?
Force the end of thinking after every prefix and sample the answer: P(final answer) and P(correct) along the trace.
"""),
        code("""
convergence = lab.answer_convergence(trace, samples=SAMPLES, out=f"{out}/importance", progress=False)
print(convergence.settled())
convergence.plot()
"""),
        md("""
## The attention-based view of the same trace
Receiver heads (the heads whose attention piles onto a few sentences) and the attention each sentence receives
from them; attention suppression (mask a sentence, measure how much later tokens' distributions move). Where do
they agree with resampling?
"""),
        code("""
import torch

proximity = 2 if MODEL is None else 4
heads = lab.receiver_heads(trace, proximity=proximity).top(3 if MODEL is None else 20)
received = []
for layer, part in heads.groupby("layer"):
    scores = lab.attention(trace, int(layer)).by_sentence().vertical_scores(proximity=proximity)
    received.append(scores[part["head"].tolist()])
frame["received_attention"] = torch.cat(received).nanmean(0).numpy()
suppression = lab.suppression_matrix(trace, kl="thought_anchors")
frame["suppression_effect"] = suppression.matrix.nanmean(1).numpy()
frame["accuracy_drop"] = -frame["resampling_importance_accuracy"]
views = ["accuracy_drop", "counterfactual_importance_kl", "received_attention", "suppression_effect"]
display(frame[views].corr(method="spearman").round(2))
top = {view: set(frame[view].nlargest(3).index) for view in views}
print("top-3 sentences by each view:", {k: sorted(v) for k, v in top.items()})
print("resampling and attention agree on:", sorted(top["accuracy_drop"] & (top["received_attention"] | top["suppression_effect"])))
"""),
        md("""
## Resilience of the culprit
Thought Branches (arXiv 2510.27484): remove the sentence, resample, and count how often a sentence with the same
meaning comes back downstream (and resample again from there), up to three rounds.
"""),
        code("""
resilience = lab.resilience(trace, samples=max(4, SAMPLES // 3), rounds=3, sentences=[culprit], progress=False)
resilience.to_frame()
"""),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()

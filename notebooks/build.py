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
""", tags=["parameters"]),
        code("""
import mimo_lab
from mimo_lab.compare import divergence

lab = mimo_lab.load(MODEL)
lab, lab.card.sampling()
"""),
        md("## One trace\n`generate` uses the model card's sampling (MiMo: temperature 0.6, top-p 0.95)."),
        code("""
trace = lab.generate(PROMPT, seed=SEED)
print(trace.thinking)
print("\\nanswer:", trace.answer, "| final answer:", trace.final_answer, "| finish:", trace.finish_reason)
"""),
        md("Per-token analytics, recorded while generating (no second pass):"),
        code("trace.tokens.head(12)"),
        md("The text coloured by entropy (hover a token for its alternatives):"),
        code("trace.token_view('entropy')"),
        code("trace.plot()"),
        md("## Sentences, labels and markers\nTransparent rules assign the 8 step labels; `segment.RuleLabeller().to_frame()` lists them, and any callable can replace them."),
        code("trace.sentences.to_frame()"),
        code("trace.sentences.plot()"),
        md("## Forking tokens\nThe top 20% of tokens by entropy: where the trace could have gone another way."),
        code("trace.forking_tokens().head(10)"),
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
samples = lab.generate([HARD_PROMPT] * SAMPLES, seed=SEED + 100)
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
fork = divergence(*pair)
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

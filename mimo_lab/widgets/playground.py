"""Playground: try a prompt and the sampling knobs, watch the model think, look into the trace.

Generate streams tokens into a thinking pane and an answer pane; Stop ends generation at once
(the model stays usable); a second Generate while one runs is refused, never interleaved; an
error in generation shows in the status line and the playground keeps working. When a trace is
done it opens in a TraceViewer (click a token for its alternatives and logit lens); "Resample
from here" keeps the trace up to the selected token and samples the rest again; the history
compares any two runs side by side. `Playground(lab).run(prompt, **sampling)` does what
Generate does, synchronously, and returns the Trace.

Settings: the knobs start at the model's default decoding (`card.default_decoding`: greedy for
MiMo-nano) with the sliders at its recommended sampling; "Resample from here" samples with the
sliders' settings (never greedily: that would repeat the trace). `run(prompt, **sampling)` uses
exactly what it is given, the card's default for the rest, never the knobs or an earlier call's
settings, and refuses what `lab.generate` refuses. Traces carry the same analytics as
`lab.generate`'s, MTP included.
"""

from __future__ import annotations

import html
import threading

import ipywidgets as W

from mimo_lab.checks import check_seed, check_str
from mimo_lab.compare import divergence
from mimo_lab.generation import check_prompt
from mimo_lab.trace import Trace
from mimo_lab.widgets.trace_viewer import TraceViewer


class Playground(W.VBox):
    def __init__(self, lab):
        if not all(hasattr(lab, name) for name in ("card", "stream", "resample")):
            raise TypeError(f"lab={type(lab).__name__} is not accepted: a Lab (from mimo_lab.load) is")
        self.lab = lab
        card = lab.card
        self.history: list[Trace] = []
        default, recommended = card.default_decoding, card.recommended_sampling
        self.trace: Trace | None = None
        self._busy = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self.prompt = W.Textarea(value="What is 128 + 367?", description="prompt",
                                 layout=W.Layout(width="100%", height="60px"))
        self.system = W.Textarea(value=card.system_prompt or "", description="system",
                                 placeholder="(none)" if card.system_prompt is None else "",
                                 layout=W.Layout(width="100%", height="34px"))
        self.temperature = W.FloatSlider(value=recommended["temperature"], min=0.05, max=2.0, step=0.05,
                                         description="temperature")
        self.top_p = W.FloatSlider(value=recommended["top_p"], min=0.05, max=1.0, step=0.01, description="top-p")
        self.top_k = W.IntText(value=recommended["top_k"] or 0, description="top-k (0=off)")
        self.max_new_tokens = W.BoundedIntText(value=min(default["max_new_tokens"], 32768), min=1,
                                               max=card.context_length, description="max tokens")
        self.seed = W.IntText(value=0, description="seed")
        self.greedy = W.Checkbox(value=bool(default["greedy"]), description="greedy")
        self.generate_button = W.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop")
        self.resample_button = W.Button(description="Resample from here", icon="random",
                                        tooltip="keep the trace up to the selected token and sample the rest")
        self.status = W.HTML("ready")
        self.thinking = W.Textarea(description="thinking", disabled=True, layout=W.Layout(width="100%", height="160px"))
        self.answer = W.Textarea(description="answer", disabled=True, layout=W.Layout(width="100%", height="60px"))
        self.viewer_box = W.VBox()
        self.history_a = W.Dropdown(description="run A", options=[])
        self.history_b = W.Dropdown(description="run B", options=[])
        self.compare_button = W.Button(description="Compare A and B", icon="columns")
        self.comparison = W.HTML()

        self.generate_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.resample_button.on_click(lambda _: self.start(resample=True))
        self.compare_button.on_click(lambda _: self.compare())
        knobs = W.VBox([W.HBox([self.temperature, self.top_p, self.top_k]),
                        W.HBox([self.max_new_tokens, self.seed, self.greedy])])
        buttons = W.HBox([self.generate_button, self.stop_button, self.resample_button, self.status])
        history = W.VBox([W.HBox([self.history_a, self.history_b, self.compare_button]), self.comparison])
        super().__init__([self.prompt, self.system, knobs, buttons, self.thinking, self.answer, self.viewer_box,
                          W.HTML("<b>history</b>"), history])

    # ------------------------------------------------------------------ settings
    def sampling(self) -> dict:
        """The knobs' settings, all of them."""
        return {"temperature": self.temperature.value, "top_p": self.top_p.value,
                "top_k": self.top_k.value or None, "max_new_tokens": self.max_new_tokens.value,
                "greedy": self.greedy.value}

    def _changed(self, reference: dict, keys) -> dict:
        """The knobs that differ from `reference` (so untouched knobs record the card's source)."""
        knobs = self.sampling()
        return {k: knobs[k] for k in keys if knobs[k] != reference.get(k)}

    def _set(self, prompt: str | None, system: str | None, sampling: dict) -> None:
        """Set the prompt, system and knobs (what typing into them does); refuses what the knobs cannot show."""
        if prompt is not None:
            self.prompt.value = check_prompt(prompt)
        if system is not None:
            self.system.value = check_str("system", system, empty_ok=True)
        widgets = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                   "max_new_tokens": self.max_new_tokens, "greedy": self.greedy, "seed": self.seed}
        unknown = sorted(set(sampling) - set(widgets))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}: {', '.join(widgets)} are accepted")
        self.lab._sampling({k: v for k, v in sampling.items() if k != "seed"})  # the same checks as generate
        if "seed" in sampling:
            check_seed("seed", sampling["seed"], none_ok=False)
        for key, value in sampling.items():
            widget = widgets[key]
            shown = 0 if (key == "top_k" and value is None) else value
            low, high = getattr(widget, "min", None), getattr(widget, "max", None)
            if low is not None and not low <= shown <= high:
                raise ValueError(f"{key}={value!r} is outside the {key} knob's range ({low} to {high}): pass it to "
                                 f"run({key}={value!r}) instead, which takes whatever lab.generate takes")
            widget.value = shown

    # ------------------------------------------------------------------ running
    def start(self, resample: bool = False) -> bool:
        """What the Generate (or Resample) button does: start in the background; False if refused."""
        if not self._busy.acquire(blocking=False):
            self.status.value = "<span style='color:#b26b00'>already generating: press Stop first</span>"
            return False
        job = self._resample if resample else self._generate_from_knobs
        self._thread = threading.Thread(target=self._work, args=(job,), daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Stop a running generation at the next token."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until a background generation has finished."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, prompt: str | list[dict] | None = None, *, system: str | None = None, seed: int | None = None,
            **sampling) -> Trace:
        """Generate synchronously and return the Trace (the panes, viewer and history update as for Generate).

        prompt: default the prompt box's text. system, seed, sampling: as `lab.stream` takes them, for this
        call only (unset ones: the card's default decoding and system prompt, a drawn seed); the knobs are
        neither read nor changed.
        """
        prompt = self.prompt.value if prompt is None else prompt
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("the playground is already generating; stop it or wait for it first")
        try:
            tokens = self.lab.stream(prompt, seed=seed, system=system, **sampling)  # checks everything, runs nothing
        except BaseException:
            self._busy.release()
            raise
        error = self._work(lambda: self._show_stream(tokens), raise_errors=True)
        if error is not None:
            raise error
        return self.trace

    def _work(self, job, raise_errors: bool = False):
        self._stop.clear()
        try:
            job()
            return None
        except Exception as err:  # noqa: BLE001 - shown in the widget, which keeps working
            self.status.value = (f"<span style='color:#c00'><b>error:</b> {html.escape(type(err).__name__)}: "
                                 f"{html.escape(str(err))}</span>")
            return err if raise_errors else None
        finally:
            self._busy.release()

    def _generate_from_knobs(self) -> None:
        card = self.lab.card
        system = self.system.value if (self.system.value or card.system_prompt is not None) else None
        settings = self._changed(card.default_decoding, ("temperature", "top_p", "top_k", "max_new_tokens",
                                                         "greedy"))
        if settings and not self.greedy.value:  # sampling: the sliders' values all apply
            settings = {k: v for k, v in self.sampling().items() if k != "top_k" or v is not None}
        self._show_stream(self.lab.stream(self.prompt.value, seed=self.seed.value, system=system, **settings))

    def _show_stream(self, stream) -> None:
        self.thinking.value, self.answer.value = "", ""
        self.status.value = "generating…"
        raw, count = "", 0
        start_tag, end_tag = self.lab.card.think_start, self.lab.card.think_end
        for token in stream:
            count += 1
            raw += token.text
            if end_tag and end_tag in raw:
                before, _, after = raw.partition(end_tag)
                self.thinking.value = before.replace(start_tag or end_tag, "").strip()
                self.answer.value = after.lstrip()
            elif start_tag and start_tag in raw or not end_tag:
                self.thinking.value = raw.replace(start_tag or "", "").lstrip() if end_tag else ""
                self.answer.value = "" if end_tag else raw
            else:
                self.answer.value = raw
            if self._stop.is_set():
                stream.close()
                break
        trace = self.lab.last_trace
        if trace is None:
            raise RuntimeError("generation ended without a trace")
        self._finish(trace, f"{count} tokens")

    def _resample(self) -> None:
        viewer = self.viewer
        if self.trace is None or viewer is None or viewer.selected is None:
            raise ValueError("select a token in the trace view first (click it), then Resample from here")
        position = viewer.selected
        self.status.value = f"resampling from position {position}…"
        # sampling, never greedy; untouched sliders are the card's recommended sampling
        settings = self._changed(self.lab.card.recommended_sampling, ("temperature", "top_p", "top_k",
                                                                      "max_new_tokens"))
        trace = self.lab.resample(self.trace, position, seed=self.seed.value + len(self.history) + 1, **settings)
        self.thinking.value, self.answer.value = trace.thinking, trace.answer
        self._finish(trace, f"resampled from position {position}")

    def _finish(self, trace: Trace, note: str) -> None:
        self.trace = trace
        self.history.append(trace)
        labels = [(f"#{i} {t.final_answer!s} · {len(t)} tok · seed {t.seed}", i) for i, t in enumerate(self.history)]
        self.history_a.options, self.history_b.options = labels, labels
        self.history_a.value = max(0, len(self.history) - 2)
        self.history_b.value = len(self.history) - 1
        self.viewer_box.children = [TraceViewer(trace, self.lab)]
        stopped = " (stopped)" if trace.finish_reason == "stopped" else ""
        self.status.value = (f"done{stopped}: {note}, final answer <code>{html.escape(str(trace.final_answer))}"
                             f"</code>")

    @property
    def viewer(self) -> TraceViewer | None:
        return self.viewer_box.children[0] if self.viewer_box.children else None

    def compare(self) -> None:
        """Show runs A and B side by side: where they fork, and their steps."""
        if self.history_a.value is None or self.history_b.value is None:
            self.comparison.value = "<i>generate at least one trace first</i>"
            return
        a, b = self.history[self.history_a.value], self.history[self.history_b.value]
        if a.prompt_text == b.prompt_text:
            fork = divergence(a, b)
            self.comparison.value = fork._repr_html_()
        else:
            self.comparison.value = ("<table><tr><th>A</th><th>B</th></tr>"
                                     f"<tr><td><pre>{html.escape(a.text)}</pre></td>"
                                     f"<td><pre>{html.escape(b.text)}</pre></td></tr></table>")

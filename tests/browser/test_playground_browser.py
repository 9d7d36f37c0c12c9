"""A real browser: JupyterLab in Debian's chromium, driven by Playwright, runs notebook 04, types a
prompt into the playground, clicks Generate, waits for the streamed answer and the token view, and
saves a screenshot (to the test's tmp dir, and to $MIMO_LAB_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04_playground.ipynb"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    root, settings, workspaces = tmp_path / "root", tmp_path / "settings", tmp_path / "workspaces"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                        "checkForUpdates": False}))
    # start the notebook's own kernel without JupyterLab's "Select Kernel" dialog (shown by default since 4.x)
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
    port = _free_port()
    log = open(tmp_path / "jupyterlab.log", "wb")
    # the kernel imports this checkout's mimo_lab even where it is not pip-installed
    path = os.pathsep.join(filter(None, [str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(workspaces)}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.root_dir={root}",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.token=", "--ServerApp.password=", "--allow-root",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
    yield url
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def _screenshot(page, shot: Path) -> None:
    """A full-page screenshot to `shot`, copied to $MIMO_LAB_SCREENSHOT_DIR when that is set."""
    page.screenshot(path=str(shot), full_page=True)
    target = os.environ.get("MIMO_LAB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / shot.name)


def _run_all_cells(page) -> None:
    """Run > Run All Cells once the kernel is connected, and again if no cell started (clicked while the session
    is still connecting, JupyterLab drops the request or asks for a kernel)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(3):
        # the status bar names the kernel and its state once the session is connected
        page.wait_for_function("() => /\\| Idle/.test(document.querySelector('#jp-main-statusbar')?.textContent ?? '')",
                               timeout=120_000)
        if page.locator(".jp-Dialog").count():   # a kernel dialog despite the setting: take the preferred kernel
            page.click(".jp-Dialog .jp-mod-accept")
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        try:   # the first code cell gets a prompt of [*] or [1]
            page.wait_for_function("() => /\\[[*\\d]+\\]/.test(document.querySelector("
                                   "'.jp-CodeCell .jp-InputPrompt')?.textContent ?? '')", timeout=15_000)
            return
        except PlaywrightTimeout:
            continue   # the next round accepts a kernel dialog if one came up, and clicks again
    raise AssertionError("Run All Cells did not start any cell")


def _diagnose(page, tmp_path) -> str:
    """What the page shows when a step times out: the cells' outputs, the kernel status and the server log's tail;
    a screenshot goes next to the log (and to $MIMO_LAB_SCREENSHOT_DIR when set)."""
    shot = tmp_path / "failure.png"
    try:
        _screenshot(page, shot)
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        status = page.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status")
    except Exception as exc:  # the page itself may be gone
        outputs, status = [f"(page unreadable: {exc})"], None
    log = (tmp_path / "jupyterlab.log").read_text(errors="replace")[-4000:]
    return (f"kernel status: {status}\nscreenshot: {shot}\noutputs:\n" + "\n---\n".join(o[:1500] for o in outputs)
            + f"\nserver log:\n{log}")


def test_playground_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        try:
            page.goto(f"{jupyterlab}/lab/tree/{NOTEBOOK.name}?reset")
            _run_all_cells(page)
            prompt = page.locator(".jupyter-widgets textarea").first
            prompt.wait_for(timeout=120_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=180_000)
            prompt.fill("What is 23 * 41?")
            page.locator(".jupyter-widgets button:has-text('Generate')").first.click()
            # the playground's textareas, in order: prompt, system, thinking, answer; the earlier cells already
            # ran it once, so wait for this prompt's thinking to appear and the status to say done
            page.wait_for_function(
                "() => { const boxes = [...document.querySelectorAll('.jupyter-widgets textarea')];"
                " const done = [...document.querySelectorAll('.jupyter-widgets .widget-html-content')]"
                ".some(e => e.textContent.startsWith('done'));"
                " return done && boxes.length > 3 && boxes[2].value.includes('41') && boxes[3].value.length > 0; }",
                timeout=180_000)
            answer = page.locator(".jupyter-widgets textarea").nth(3).input_value()
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            assert answer.strip(), "the answer pane is empty"
            heatmaps = page.locator(".js-plotly-plot .heatmaplayer").count()
            assert heatmaps >= 1, "no coloured token view"
            shot = tmp_path / "playground.png"
            _screenshot(page, shot)
            assert shot.stat().st_size > 20_000
        except Exception as exc:
            pytest.fail(f"{type(exc).__name__}: {exc}\n{_diagnose(page, tmp_path)}")
        browser.close()

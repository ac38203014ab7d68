"""Drive a notebook's widgets in a real browser: JupyterLab on 127.0.0.1, headless Chromium, Playwright.

A notebook's slider test takes three lines (see test_00_welcome_slider.py):

    def test_rank_slider(lab):
        notebook = lab.run_notebook("02_svd_and_low_rank_approximation.ipynb")
        notebook.check_slider_roundtrip(css_prefix="photo", control="rank", steps=1)

The classes come from `lora_edu.widgets.LiveFigure`: ``{prefix}-{control}``, ``{prefix}-label``, ``{prefix}-plot``.
What is known to work on these machines is in the course's reference notes (browser-testing.md).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
KERNEL_IDLE = "ipykernel) | Idle"
RUN_ALL_TIMEOUT_MS = 240_000
MOVE_TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is missing: pip install -r requirements-test.txt (never `playwright install`)"
    if find_chromium() is None:
        return "Chromium is missing: sudo apt-get install -y chromium (Debian/Ubuntu), or install Chrome"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLabServer:
    """A JupyterLab server on 127.0.0.1 with a random token, serving a temporary copy of notebooks/.

    The copy keeps autosave away from the repository's stored notebooks; the config, runtime, settings and
    workspace folders are temporary too, with the news pop-up off and windowing off (so off-screen cells render).
    """

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.root = workdir / "notebooks"
        shutil.copytree(NOTEBOOK_DIR, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.log_path = workdir / "jupyterlab.log"
        self.process: subprocess.Popen | None = None

    def _environment(self) -> dict:
        env = dict(os.environ)
        dirs = {name: self.workdir / name for name in ("config", "runtime", "settings", "workspaces")}
        for folder in dirs.values():
            folder.mkdir(exist_ok=True)
        settings = dirs["settings"] / "@jupyterlab"
        (settings / "apputils-extension").mkdir(parents=True)
        (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        (settings / "notebook-extension").mkdir(parents=True)
        (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
            json.dumps({"windowingMode": "none"}))
        env.update(JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
                   JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), PYTHONUNBUFFERED="1")
        return env

    def start(self, timeout_s: float = 90) -> None:
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
                   "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}", "--ServerApp.port_retries=0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")
        log = self.log_path.open("w")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self._environment(),
                                        cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer within {timeout_s} s:\n{self.log_tail()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str) -> str:
        # A workspace of its own, reset: otherwise JupyterLab reopens the tabs of earlier tests beside this one,
        # and the status bar and Run All may refer to another notebook.
        workspace = f"test-{secrets.token_hex(4)}"
        return f"{self.url}/lab/workspaces/{workspace}/tree/{name}?reset&token={self.token}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RunningNotebook:
    """A notebook open in JupyterLab whose cells have all run; reads and moves its widgets."""

    def __init__(self, page, name: str):
        self.page = page
        self.name = name

    def wait_idle(self, timeout_ms: int = RUN_ALL_TIMEOUT_MS) -> None:
        from playwright.sync_api import expect
        expect(self.page.locator("#jp-main-statusbar")).to_contain_text(KERNEL_IDLE, timeout=timeout_ms)

    def run_all(self) -> None:
        from playwright.sync_api import expect
        self.wait_idle(timeout_ms=120_000)  # the kernel is ready; Run All earlier opens a kernel dialog
        self.page.get_by_role("menuitem", name="Run", exact=True).click()
        self.page.locator("li[data-command='runmenu:run-all']").click()
        # Busy first, then idle again: otherwise "idle" could be the state before the run started.
        expect(self.page.locator("#jp-main-statusbar")).to_contain_text("Busy", timeout=30_000)
        self.wait_idle()
        # The kernel can look idle between two cells; a slider moved then would wait behind the cells still
        # queued. Done means no input prompt shows [*] any more.
        expect(self.page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=RUN_ALL_TIMEOUT_MS)
        self.wait_idle()
        errors = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = self.page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
        assert tracebacks.count() == 0, f"{self.name} raised while running:\n{tracebacks.first.inner_text()[:2000]}"
        del errors

    def label_text(self, css_class: str) -> str:
        return self.page.locator(f".{css_class}").first.inner_text()

    def image_src(self, css_class: str) -> str:
        src = self.page.locator(f".{css_class} img").first.get_attribute("src")
        assert src and src.startswith("data:image/png"), f".{css_class} shows no PNG image (src={src!r:.60})"
        return src

    def press(self, css_class: str, key: str, times: int = 1) -> None:
        handle = self.page.locator(f".{css_class} .noUi-handle").first
        handle.focus()
        for _ in range(times):
            handle.press(key)

    def wait_settled(self, css_class_label: str, old_text: str) -> str:
        """Wait for the readout to leave ``old_text``, then for the kernel to be idle with the readout unchanged
        over two polls: several key presses are several updates, each with its own busy-idle."""
        from playwright.sync_api import expect
        label = self.page.locator(f".{css_class_label}").first
        expect(label).not_to_have_text(old_text, timeout=MOVE_TIMEOUT_MS)
        deadline = time.monotonic() + MOVE_TIMEOUT_MS / 1000
        previous = None
        while time.monotonic() < deadline:
            self.wait_idle(timeout_ms=MOVE_TIMEOUT_MS)
            text = label.inner_text()
            if text == previous:
                return text
            previous = text
            self.page.wait_for_timeout(400)
        raise AssertionError(f".{css_class_label} kept changing for {MOVE_TIMEOUT_MS / 1000:.0f} s")

    def wait_image_differs(self, css_class_plot: str, old_src: str) -> str:
        """The figure's src once it differs from ``old_src`` (the image can arrive just after the readout)."""
        deadline = time.monotonic() + MOVE_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            src = self.image_src(css_class_plot)
            if src != old_src:
                return src
            self.page.wait_for_timeout(200)
        raise AssertionError(f"the readout changed but .{css_class_plot} still shows the first image")

    def wait_image_equals(self, css_class_plot: str, expected_src: str) -> None:
        deadline = time.monotonic() + MOVE_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            if self.image_src(css_class_plot) == expected_src:
                return
            self.page.wait_for_timeout(200)
        raise AssertionError(f"moving back did not reproduce the first image of .{css_class_plot} exactly")

    def check_slider_roundtrip(self, css_prefix: str, control: str, steps: int = 1) -> None:
        """Move ``{css_prefix}-{control}`` right by ``steps`` with the keyboard; the readout and the image
        must change; move it back; the readout and the image must be exactly the first ones again."""
        from playwright.sync_api import expect
        slider, label, plot = f"{css_prefix}-{control}", f"{css_prefix}-label", f"{css_prefix}-plot"
        first_text, first_image = self.label_text(label), self.image_src(plot)
        self.press(slider, "ArrowRight", steps)
        moved_text = self.wait_settled(label, first_text)
        moved_image = self.wait_image_differs(plot, first_image)
        self.press(slider, "ArrowLeft", steps)
        expect(self.page.locator(f".{label}").first).to_have_text(first_text, timeout=MOVE_TIMEOUT_MS)
        self.wait_settled(label, moved_text)
        assert self.label_text(label) == first_text
        self.wait_image_equals(plot, first_image)


class Lab:
    """The `lab` fixture: one JupyterLab server and one Chromium for the whole test session."""

    def __init__(self, server: JupyterLabServer, browser):
        self.server = server
        self.browser = browser
        self.pages = []

    def run_notebook(self, name: str) -> RunningNotebook:
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        self.pages.append((name, page))
        page.goto(self.server.notebook_url(name))
        notebook = RunningNotebook(page, name)
        notebook.run_all()
        return notebook

    def screenshot_all(self, test_name: str) -> list[Path]:
        ARTIFACTS.mkdir(exist_ok=True)
        shots = []
        for name, page in self.pages:
            path = ARTIFACTS / f"{test_name}-{Path(name).stem}.png"
            try:
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)
            except Exception:  # a screenshot is a diagnosis aid; the failure itself is reported anyway
                pass
        return shots

    def close_pages(self) -> None:
        for _, page in self.pages:
            page.close()
        self.pages.clear()

"""`make lab` starts a JupyterLab server that serves notebooks/00_welcome.ipynb.

Runs only inside the environment that `make` set up (the repository's .venv, as `make test` and CI use), so that
`make lab` finds everything installed and starts at once instead of installing.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"

pytestmark = pytest.mark.skipif(
    not (VENV / ".course-installed").exists() or Path(sys.prefix).resolve() != VENV.resolve(),
    reason="runs inside the .venv that `make` sets up: use `make test`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_lab_serves_the_welcome_notebook(tmp_path):
    port, token = free_port(), secrets.token_hex(8)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    args = f"--no-browser --port={port} --ServerApp.port_retries=0 --ServerApp.ip=127.0.0.1 --IdentityProvider.token={token}"
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(["make", "-s", "lab", f"LAB_ARGS={args}"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/00_welcome.ipynb?content=0&token={token}"
        deadline, reply = time.monotonic() + 90, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    reply = json.load(answer)
                    break
            except OSError:
                time.sleep(0.5)
        assert reply is not None, f"no answer on port {port}:\n{(tmp_path / 'lab.log').read_text()[-2000:]}"
        assert reply["name"] == "00_welcome.ipynb" and reply["type"] == "notebook"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=5) as page:
            assert page.status == 200 and b"JupyterLab" in page.read()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)

"""Fixtures for the browser tests: skipped with a reason when Chromium or Playwright is missing, unless
LORA_EDU_REQUIRE_BROWSER=1 (as in CI), which turns the skip into a failure."""
from __future__ import annotations

import os

import pytest

from .harness import CHROMIUM_ARGS, JupyterLabServer, Lab, find_chromium, missing_requirements

REQUIRE_ENV_VAR = "LORA_EDU_REQUIRE_BROWSER"


def pytest_collection_modifyitems(config, items):
    why = missing_requirements()
    if why is None:
        return
    required = os.environ.get(REQUIRE_ENV_VAR, "") == "1"
    for item in items:
        if "browser" not in item.nodeid.split("::")[0].split("/"):
            continue
        if required:
            item.add_marker(pytest.mark.usefixtures("_browser_required_but_missing"))
        else:
            item.add_marker(pytest.mark.skip(reason=f"browser test skipped: {why}; "
                                                    f"set {REQUIRE_ENV_VAR}=1 to make this a failure"))


@pytest.fixture
def _browser_required_but_missing():
    pytest.fail(f"{REQUIRE_ENV_VAR}=1 but the browser test cannot run: {missing_requirements()}")


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for every browser test: Playwright's sync API runs one instance per process, so the
    JupyterLab tests and the book test share it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def _lab_session(tmp_path_factory, chromium):
    server = JupyterLabServer(tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    try:
        yield Lab(server, chromium)
    finally:
        server.stop()


@pytest.fixture
def lab(_lab_session, request):
    yield _lab_session
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        shots = _lab_session.screenshot_all(request.node.name)
        print(f"screenshots: {[str(s.name) for s in shots]}; JupyterLab log:\n{_lab_session.server.log_tail()}")
    _lab_session.close_pages()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)

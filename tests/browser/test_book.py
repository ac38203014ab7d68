"""Browser test of `make book`: every page of the built site opens in headless Chromium, served from a temporary
folder on 127.0.0.1, with no request leaving the machine. On each page: the title is there, every image decodes,
the math is typeset by the local MathJax (pages with math get MathJax's output elements and no TeX errors), and
every local link resolves (its file exists; a same-page #anchor names an element of the page)."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import re
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from .harness import ROOT

_spec = importlib.util.spec_from_file_location("make_book", ROOT / "tools" / "make_book.py")
make_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_book)

NOTEBOOKS = make_book.notebook_paths()
PAGES = ["index"] + [path.stem for path in NOTEBOOKS]
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.DOTALL)
TIMEOUT_MS = 60_000


def _has_math(stem: str) -> bool:
    if stem == "index":
        return False
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    return any(cell.cell_type == "markdown" and MATH.search(cell.source) for cell in nb.cells)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("book") / "book"
    make_book.make_book(outdir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(outdir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield outdir, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_book_has_a_page_per_notebook(book):
    outdir, _ = book
    assert sorted(p.stem for p in outdir.glob("*.html")) == sorted(PAGES)


@pytest.mark.parametrize("stem", PAGES)
def test_page_loads_with_figures_math_and_links(book, chromium, stem):
    outdir, base = book
    page = chromium.new_page()
    failures, outside = [], []

    def route(route_):
        if urlsplit(route_.request.url).hostname == "127.0.0.1":
            route_.continue_()
        else:
            outside.append(route_.request.url)
            route_.abort()

    page.route("**/*", route)
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: None if r.url.startswith("about:") else failures.append(f"failed {r.url}"))
    try:
        page.goto(f"{base}/{stem}.html", wait_until="load", timeout=TIMEOUT_MS)
        assert page.title().strip(), "the page has no title"

        images = page.evaluate("""() => Promise.all(Array.from(document.images).map(img =>
            (img.complete ? Promise.resolve() : new Promise(r => { img.onload = img.onerror = r; }))
            .then(() => ({src: img.src.slice(0, 60), width: img.naturalWidth}))))""")
        undecoded = [img["src"] for img in images if img["width"] == 0]
        assert not undecoded, f"images that did not decode: {undecoded}"
        if stem != "index":
            nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
            stored = sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                         for out in cell.outputs)
            assert len(images) >= stored, f"{stored} stored figures but {len(images)} images on the page"

        if _has_math(stem):
            page.wait_for_function("() => window.MathJax && window.MathJax.Hub", timeout=TIMEOUT_MS)
            rendered = page.evaluate("""() => new Promise(done => MathJax.Hub.Queue(() => done({
                math: document.querySelectorAll('.MathJax, .MathJax_Display').length,
                errors: Array.from(document.querySelectorAll('.MathJax_Error, merror, .merror'))
                             .map(e => e.textContent.slice(0, 80)),
                scripts: document.querySelectorAll('script[type^="math/tex"]').length})))""")
            assert rendered["math"] > 0, "the page has math but MathJax rendered none"
            assert rendered["math"] >= rendered["scripts"], f"not all math was typeset: {rendered}"
            assert not rendered["errors"], f"TeX errors: {rendered['errors'][:3]}"

        links = page.evaluate("""() => Array.from(document.querySelectorAll('a[href]')).map(a => ({
            href: a.getAttribute('href'),
            // as a browser does: the fragment as written, then percent-decoded (nbconvert's ids keep the %XX)
            target: a.getAttribute('href').startsWith('#') ?
                    !!(document.getElementById(a.getAttribute('href').slice(1)) ||
                       document.getElementById(decodeURIComponent(a.getAttribute('href').slice(1)))) : null}))""")
        broken = []
        for link in links:
            href = link["href"]
            parts = urlsplit(href)
            if parts.scheme in ("http", "https", "mailto"):
                continue
            assert not parts.scheme, f"unexpected link {href}"
            if not parts.path:
                if parts.fragment and not link["target"]:
                    broken.append(href)
            elif not (outdir / unquote(parts.path)).is_file():
                broken.append(href)
        assert not broken, f"links that do not resolve: {broken[:5]}"
        if stem == "index":
            assert [l["href"] for l in links] == [f"{s}.html" for s in PAGES[1:]]
        else:
            hrefs = {l["href"] for l in links}
            assert "index.html" in hrefs, "no link back to the index"
        assert not outside, f"requests that left the machine: {outside[:3]}"
        assert not failures, f"failed requests: {failures[:5]}"
    except Exception:
        artifacts = Path(__file__).resolve().parent / "artifacts"
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / f"book-{stem}.png"), full_page=False)
        raise
    finally:
        page.close()

"""The course as a static HTML site, built offline from the stored notebooks (``make book``).

Usage: python tools/make_book.py [OUTDIR]   (default: book/, git-ignored; open OUTDIR/index.html)

- Each notebooks/NN_*.ipynb becomes OUTDIR/NN_*.html with nbconvert's ``lab`` template, from its stored outputs
  (nothing is executed). Figures are the stored PNGs (embedded in the page); a widget shows its stored PNG fallback.
- Math is rendered by MathJax 2.7 from a local copy in OUTDIR/mathjax/ (from the ``jupyter-server-mathjax``
  package), so the pages need no network: nbconvert's CDN scripts are removed.
- OUTDIR/index.html lists the notebooks present in course order (titles and summaries from
  ``lora_edu.course.COURSE_MAP``); every page gets previous / index / next links at its top and bottom.
"""
from __future__ import annotations

import html
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
MATHJAX_DIR = "mathjax"
MATHJAX_URL = f"{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"
# Parts of MathJax's static folder the pages never load: other languages (English is built in), the SVG output.
MATHJAX_SKIP = ("localization", "SVG")
REMOTE_SCRIPT = re.compile(r"<script[^>]*\ssrc=\"https?://[^\"]*\"[^>]*>\s*</script>\s*", re.IGNORECASE)
# jupyter-server-mathjax ships only the STIX-Web fonts: HTML-CSS output is told to use them (it asks for the absent
# TeX fonts otherwise), and the hidden assistive MathML copy is off (its styles ask for absent TeX .otf fonts).
# Read at MathJax's start-up, before nbconvert's own configuration (delimiters, equation numbers).
MATHJAX_CONFIG = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null},
  AssistiveMML: {disabled: true}, menuSettings: {assistiveMML: false}
});
</script>"""
NAV_STYLE = """<style>
.book-nav { display: flex; justify-content: space-between; gap: 1em; max-width: 1100px; margin: 0.6em auto;
            padding: 0.4em 1em; font: 14px sans-serif; border-bottom: 1px solid #ddd; }
.book-nav.bottom { border-bottom: none; border-top: 1px solid #ddd; }
.book-nav a { text-decoration: none; } .book-nav span.none { color: #aaa; }
</style>"""


def notebook_paths(folder: Path = NOTEBOOKS) -> list[Path]:
    """The notebooks present in folder, in course order (NN_name.ipynb)."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def mathjax_source() -> Path:
    """The folder of MathJax's static files shipped by jupyter-server-mathjax."""
    try:
        import jupyter_server_mathjax
    except ImportError as error:
        raise SystemExit("make_book needs the jupyter-server-mathjax package (a local MathJax): "
                         "pip install -r requirements.txt") from error
    folder = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (folder / "MathJax.js").is_file():
        raise SystemExit(f"jupyter-server-mathjax has no static/MathJax.js in {folder.parent}")
    return folder


def titles() -> dict[str, tuple[str, str]]:
    """File stem -> (title, summary) from the course map; notebooks not in the map get their stem as title."""
    from lora_edu.course import COURSE_MAP
    return {stem: (title, summary) for stem, title, summary in COURSE_MAP}


def _title(stem: str, known: dict) -> str:
    return f"{stem[:2]} · {known[stem][0]}" if stem in known else stem


def _nav(pages: list[str], i: int, known: dict, where: str) -> str:
    def link(j: int, kind: str, before: str = "", after: str = "") -> str:
        if not 0 <= j < len(pages):
            return f'<span class="none nav-{kind}"></span>'
        return f'<a class="nav-{kind}" href="{pages[j]}.html">{before}{html.escape(_title(pages[j], known))}{after}</a>'
    return (f'<nav class="book-nav {where}">{link(i - 1, "prev", before="← ")}'
            f'<a class="nav-index" href="index.html">Course index</a>{link(i + 1, "next", after=" →")}</nav>')


def _index_page(pages: list[str], known: dict) -> str:
    from lora_edu.course import COURSE_MAP
    items = "\n".join(
        f'<li><a href="{stem}.html">{html.escape(_title(stem, known))}</a>'
        + (f" — {html.escape(known[stem][1])}" if stem in known else "") + "</li>" for stem in pages)
    coming = [title for stem, title, _ in COURSE_MAP if stem not in pages]
    coming_line = (f"<p>Still to come: {html.escape(', '.join(coming))}.</p>" if coming else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>The LoRA course</title>
<style>body {{ font: 16px/1.5 sans-serif; max-width: 900px; margin: 2em auto; padding: 0 1em; }}
li {{ margin: 0.4em 0; }}</style></head>
<body><h1>The LoRA course</h1>
<p>From rank and the SVD to LoRA, built from scratch, checked against Hugging Face PEFT. These pages show each
notebook with its stored outputs; to run them, open the notebooks in JupyterLab (<code>make lab</code>).</p>
<ol class="book-index" start="0">
{items}
</ol>
{coming_line}
</body></html>
"""


def _page(body: str, nav_top: str, nav_bottom: str) -> str:
    body = REMOTE_SCRIPT.sub("", body)
    body = body.replace("<script src=\"" + MATHJAX_DIR, MATHJAX_CONFIG + "\n<script src=\"" + MATHJAX_DIR, 1)
    body = body.replace("</head>", NAV_STYLE + "\n</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "\n" + nav_top, body, count=1)
    head, sep, tail = body.rpartition("</body>")
    return head + nav_bottom + "\n" + sep + tail


def make_book(outdir: Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Build the site into outdir (emptied first); returns the pages written, index.html first."""
    from nbconvert import HTMLExporter

    paths = notebook_paths() if notebooks is None else notebooks
    if not paths:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb found in {NOTEBOOKS}")
    source = mathjax_source()
    if outdir.exists():
        shutil.rmtree(outdir)
    outdir.mkdir(parents=True)
    shutil.copytree(source, outdir / MATHJAX_DIR, ignore=lambda folder, names: [n for n in names
                                                                                if n in MATHJAX_SKIP])
    exporter = HTMLExporter(template_name="lab")
    exporter.mathjax_url = MATHJAX_URL
    known = titles()
    pages = [path.stem for path in paths]
    written = [outdir / "index.html"]
    written[0].write_text(_index_page(pages, known), encoding="utf-8")
    for i, path in enumerate(paths):
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": _title(path.stem, known)}})
        page = outdir / f"{path.stem}.html"
        page.write_text(_page(body, _nav(pages, i, known, "top"), _nav(pages, i, known, "bottom")), encoding="utf-8")
        written.append(page)
    return written


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else ROOT / "book"
    start = time.perf_counter()
    written = make_book(outdir)
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in outdir.rglob("*") if f.is_file())
    print(f"wrote {len(written)} pages to {outdir} in {seconds:.1f} s ({size / 1e6:.1f} MB); open index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

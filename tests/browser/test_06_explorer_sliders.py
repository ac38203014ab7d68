"""Browser test: notebook 06's sliders in JupyterLab. The rank and α sliders of the rank-and-α explorer, and
the two sliders of the planted-rank figure, each redraw the figure and the readout, and moving back reproduces
the first image exactly. The notebook runs once; every slider is checked on the same page."""


def test_explorer_rank_and_alpha_sliders(lab):
    notebook = lab.run_notebook("06_rank_and_alpha_explorer.ipynb")
    notebook.check_slider_roundtrip(css_prefix="explorer", control="rank", steps=1)
    notebook.check_slider_roundtrip(css_prefix="explorer", control="alpha", steps=1)
    notebook.check_slider_roundtrip(css_prefix="explorer", control="lr", steps=1)
    notebook.check_slider_roundtrip(css_prefix="planted", control="rank", steps=1)
    notebook.check_slider_roundtrip(css_prefix="planted", control="true_rank", steps=1)

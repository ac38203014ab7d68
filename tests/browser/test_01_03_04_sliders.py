"""The sliders of notebooks 01, 03 and 04 in JupyterLab: each move redraws the readout and the figure, and
moving back reproduces the first image exactly."""
import pytest


@pytest.mark.parametrize("notebook_name, css_prefix, control", [
    ("01_rank_and_decomposition.ipynb", "approx", "rank"),
    ("03_parameter_savings.ipynb", "calc", "r"),
    ("04_lora_from_scratch.ipynb", "lora04", "alpha"),
])
def test_slider_roundtrip(lab, notebook_name, css_prefix, control):
    notebook = lab.run_notebook(notebook_name)
    notebook.check_slider_roundtrip(css_prefix=css_prefix, control=control, steps=1)

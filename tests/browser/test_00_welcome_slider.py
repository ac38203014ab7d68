"""The widget check of 00_welcome, in JupyterLab: the slider moves the readout and the figure, and back."""


def test_welcome_frequency_slider(lab):
    notebook = lab.run_notebook("00_welcome.ipynb")
    notebook.check_slider_roundtrip(css_prefix="welcome", control="frequency", steps=2)

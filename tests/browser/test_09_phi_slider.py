"""Browser test: notebook 09's φ widget in JupyterLab. Moving the rank slider redraws the heatmap and the readout
(φ of a different pair of runs), and moving back reproduces the first image exactly."""


def test_phi_rank_slider(lab):
    notebook = lab.run_notebook("09_what_lora_learns.ipynb")
    notebook.check_slider_roundtrip(css_prefix="phi", control="rank", steps=1)

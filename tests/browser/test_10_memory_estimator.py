"""Browser test: notebook 10's memory estimator in JupyterLab. Each of its four sliders (model, method, LoRA rank,
sequence length) redraws the figure and the readout, and moving back reproduces the first image exactly."""


def test_memory_estimator_sliders(lab):
    notebook = lab.run_notebook("10_lora_variants.ipynb")
    for control in ("model", "method", "rank", "seq_len"):
        notebook.check_slider_roundtrip(css_prefix="memory", control=control, steps=1)

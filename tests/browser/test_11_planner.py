"""Browser test: notebook 11's planner in JupyterLab. Each of its four sliders (model, tasks, GPU memory, latency
need) redraws the figure and the readout, and moving back reproduces the first image exactly."""


def test_planner_sliders(lab):
    notebook = lab.run_notebook("11_choosing_a_strategy.ipynb")
    for control in ("model", "tasks", "gpu", "latency"):
        notebook.check_slider_roundtrip(css_prefix="planner", control=control, steps=1)

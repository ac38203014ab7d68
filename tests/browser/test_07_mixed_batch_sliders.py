"""Browser test: notebook 07's mixed-batch throughput figure in JupyterLab. The number of distinct adapters and the
batch size each redraw the figure and the readout, and moving back reproduces the first image exactly."""


def test_mixed_batch_sliders(lab):
    notebook = lab.run_notebook("07_many_tasks_one_model.ipynb")
    notebook.check_slider_roundtrip(css_prefix="many07", control="adapters", steps=1)
    notebook.check_slider_roundtrip(css_prefix="many07", control="batch", steps=1)

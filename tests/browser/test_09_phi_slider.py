"""Browser test: notebook 09's φ widget in JupyterLab. Moving the rank slider redraws the heatmap and the readout
(φ of a different pair of runs), and moving back reproduces the first image exactly."""


def test_phi_rank_slider(lab):
    from playwright.sync_api import expect
    notebook = lab.run_notebook("09_what_lora_learns.ipynb")
    # This notebook runs long after its widget cell; on busy cores the status bar can read Idle between two cells.
    # Every queued cell shows the prompt [*] until it has run: wait until none is left before moving the slider.
    expect(notebook.page.locator(".jp-InputPrompt", has_text="[*]")).to_have_count(0, timeout=300_000)
    notebook.wait_idle()
    notebook.check_slider_roundtrip(css_prefix="phi", control="rank", steps=1)

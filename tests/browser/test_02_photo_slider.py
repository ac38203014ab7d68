"""Browser test: the photo-compression slider of notebook 02 redraws the image and the error label,
and returning to the first rank reproduces the first image exactly."""


def test_photo_rank_slider(lab):
    notebook = lab.run_notebook("02_svd_and_low_rank_approximation.ipynb")
    notebook.check_slider_roundtrip(css_prefix="photo", control="rank", steps=1)

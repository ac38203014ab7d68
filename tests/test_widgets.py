"""LiveFigure (lora_edu.widgets): drawn at defaults, redrawn on each move, reproducible PNGs, static fallback."""
import base64

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest

from lora_edu.widgets import LiveFigure, figure_to_png

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def make_live():
    calls = []

    def draw(rank, scale):
        calls.append((rank, scale))
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, rank * scale])
        return fig, f"rank {rank}, scale {scale}"

    controls = {"rank": widgets.IntSlider(value=2, min=1, max=8),
                "scale": widgets.FloatSlider(value=1.0, min=0.5, max=2.0)}
    live = LiveFigure(draw, controls, css_prefix="demo")
    return live, calls


def test_drawn_once_at_the_defaults():
    live, calls = make_live()
    assert calls == [(2, 1.0)]
    assert live.label.value == "rank 2, scale 1.0"
    assert live.png.startswith(b"\x89PNG")
    assert live.plot.outputs[0]["data"]["image/png"] == base64.b64encode(live.png).decode()


def test_a_move_redraws_and_moving_back_gives_the_same_bytes():
    live, calls = make_live()
    first = live.png
    live.controls["rank"].value = 5
    assert calls[-1] == (5, 1.0) and live.label.value == "rank 5, scale 1.0"
    assert live.png != first
    live.controls["rank"].value = 2
    assert live.png == first


def test_css_classes_for_browser_tests():
    live, _ = make_live()
    assert "demo-rank" in live.controls["rank"]._dom_classes
    assert "demo-scale" in live.controls["scale"]._dom_classes
    assert "demo-label" in live.label._dom_classes and "demo-plot" in live.plot._dom_classes


def test_static_viewers_get_the_default_figure():
    live, _ = make_live()
    bundle = live._repr_mimebundle_()
    assert WIDGET_MIME in bundle
    assert base64.b64decode(bundle["image/png"]) == live.png


def test_needs_controls():
    with pytest.raises(ValueError, match="controls"):
        LiveFigure(lambda: None, {}, css_prefix="x")


def test_figure_to_png_closes_the_figure():
    fig = plt.figure()
    number = fig.number
    figure_to_png(fig)
    assert number not in plt.get_fignums()

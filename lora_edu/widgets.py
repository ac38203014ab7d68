"""Interactive figures: sliders that redraw a matplotlib figure and a text readout.

Explained in notebook 00_welcome. Conventions every notebook follows:

- the figure is drawn once with the default values when the cell runs, and that PNG is also stored
  as a fallback beside the widget, so static viewers (GitHub, nbviewer) show it;
- heavy results are precomputed; ``draw`` only picks from them, so a move answers in well under 1 s;
- every control, the readout and the figure carry stable CSS classes for the browser tests
  (``tests/browser``): ``{prefix}-{control}``, ``{prefix}-label``, ``{prefix}-plot`` (e.g. ``rank-slider``).
"""
from __future__ import annotations

import base64
import io
from typing import Callable, Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt


def figure_to_png(fig, dpi: int = 80) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it.

    The same figure always gives the same bytes (no timestamp is written), so a browser test can
    check that returning a slider to its first value reproduces the first image exactly.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


class LiveFigure:
    """Controls, a text readout and a figure that redraws whenever a control moves.

    ``draw(**values)`` receives the current value of every control (by the names in ``controls``)
    and returns ``(figure, readout_html)``. ``css_prefix`` is the ``{prefix}`` of the CSS classes.
    """

    def __init__(self, draw: Callable[..., tuple], controls: Mapping[str, widgets.ValueWidget],
                 css_prefix: str, dpi: int = 80):
        if not controls:
            raise ValueError("controls must name at least one widget")
        self.draw = draw
        self.controls = dict(controls)
        self.dpi = dpi
        self.label = widgets.HTML()
        self.label.add_class(f"{css_prefix}-label")
        self.plot = widgets.Output()
        self.plot.add_class(f"{css_prefix}-plot")
        for name, control in self.controls.items():
            control.add_class(f"{css_prefix}-{name}")
            control.observe(lambda _change: self.redraw(), names="value")
        self.box = widgets.VBox([widgets.HBox(list(self.controls.values())), self.label, self.plot])
        self.png = b""
        self.redraw()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def redraw(self) -> None:
        fig, readout = self.draw(**self.values())
        self.png = figure_to_png(fig, self.dpi)
        # Set the Output widget's state directly rather than capturing a display: nothing is printed into
        # whichever cell happens to be running (nbval would see it there), and the browser gets a data: URL.
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": base64.b64encode(self.png).decode("ascii"),
                                       "text/plain": "<figure>"}},)
        self.label.value = readout  # after the figure: a readout showing the new value means the figure has been sent

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        # Static viewers cannot render a widget: they fall back to the figure drawn at the defaults.
        bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        return bundle

"""What every view shares: its construction from (data, state) and small Panel helpers."""

from __future__ import annotations

import functools
import html
import traceback
from collections.abc import Callable

import panel as pn
import param

from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.state import SessionState
from qkscale.errors import QKScaleError


class View(pn.viewable.Viewer):
    """A view over the data shared by all sessions and one session's :class:`SessionState`."""

    state = param.ClassSelector(class_=SessionState, constant=True)

    def __init__(self, data: DashboardData, state: SessionState, **params):
        self.data = data
        super().__init__(state=state, **params)

    @classmethod
    def available(cls, data: DashboardData) -> bool:
        """Whether this view applies to ``data``'s store (every view but the image view does)."""
        return True


def message(text: str, alert_type: str = "warning", css_classes: tuple[str, ...] = ("qk-message",)) -> pn.pane.Alert:
    """An alert showing ``text`` as text: it may quote store strings (method names, paths) or the user's input."""
    return pn.pane.Alert(html.escape(text), alert_type=alert_type, css_classes=list(css_classes))


def guarded(view: Callable) -> Callable:
    """Run a view builder; a user error or a failure becomes a message in the UI, never a crashed session."""

    @functools.wraps(view)
    def build(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except QKScaleError as exc:
            return message(str(exc))
        except Exception as exc:  # noqa: BLE001 - a session must survive anything a view raises
            traceback.print_exc()
            return message(f"could not draw this view: {exc}", "danger")

    return build


def plot(element, **params) -> pn.pane.HoloViews:
    """A HoloViews pane whose axes are its own (Panel links axes of same-named dimensions by default)."""
    return pn.pane.HoloViews(element, linked_axes=False, **params)


def lazy(method: Callable) -> pn.param.ParamMethod:
    """A view evaluated only once it is shown (hidden tabs cost nothing until opened)."""
    return pn.param.ParamMethod(method, lazy=True)


def on_tap(element, action: Callable[[float, float], None]) -> None:
    """Call ``action(x, y)`` on every click on ``element`` (clicks outside any data are ignored)."""
    from qkscale.dashboard.plotting import hv

    tap = hv.streams.Tap(source=element, x=None, y=None)
    tap.add_subscriber(lambda x, y: None if x is None or y is None else action(x, y))


def button(label: str, action: Callable[[], None], **params) -> pn.widgets.Button:
    """A button that runs ``action()`` on every click."""
    widget = pn.widgets.Button(label=label, **params)
    widget.on_click(lambda event: action())
    return widget

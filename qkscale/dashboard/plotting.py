"""HoloViews with its Bokeh plotting backend loaded and current, as every view builder sets Bokeh options."""

from __future__ import annotations

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the backend that .opts() validates against

hv.Store.set_current_backend("bokeh")

__all__ = ["hv"]

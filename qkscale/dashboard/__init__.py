"""Panel dashboard over a store: matrix, single-head, sentence, aggregate, image and metrics views."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qkscale.dashboard.app import Dashboard


def app(store) -> Dashboard:
    """The dashboard of ``store`` (a path or Store) as a Panel viewable (notebook or ``.servable()``)."""
    from qkscale.dashboard.app import app as build

    return build(store)


__all__ = ["app"]

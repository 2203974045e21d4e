"""`qkscale serve`: one Panel server, one store loaded once, one dashboard per browser session."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from qkscale.dashboard import single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.state import SessionState
from qkscale.errors import OptionError

DEFAULT_PORT = 5006
DEFAULT_ADDRESS = "127.0.0.1"


def prepare(store: str | Path) -> DashboardData:
    """Open the store and read what every session shares (vocabulary, metrics) once."""
    import datashader  # noqa: F401 - imported here, not in the first session
    import holoviews  # noqa: F401

    data = DashboardData(store)
    data.vocabulary, data.metrics  # noqa: B018 - read once, before the first session
    return data


def _session(data: DashboardData):
    """One browser session's dashboard; the first also has numba compile the default colouring's zoom meanwhile."""
    from qkscale.dashboard.app import Dashboard

    single.warm_up_in_background(SessionState.param.colour.default)  # after the port opened, not before
    return Dashboard(data)


def serve(
    store: str | Path,
    port: int = DEFAULT_PORT,
    address: str = DEFAULT_ADDRESS,
    allow_websocket_origin: list[str] | None = None,
    show: bool = False,
    verbose: bool = False,
) -> None:
    """Serve the dashboard of ``store`` until interrupted. Only the app is served: no file routes.

    ``verbose`` logs the server-side time of every redraw of the single-head view.
    """
    import panel as pn

    from qkscale.dashboard.app import load_extensions

    if not 0 < port < 65536:
        raise OptionError(f"--port {port} is not a TCP port (1-65535)")
    data = prepare(store)
    origins = list(allow_websocket_origin or []) or [f"{address}:{port}", f"localhost:{port}"]
    logging.getLogger("bokeh").setLevel(logging.WARNING)
    if verbose:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("qkscale: %(message)s"))
        logger = logging.getLogger("qkscale.dashboard")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    print(f"qkscale: serving {data.store.path} at http://{address}:{port}/ (Ctrl-C to stop)", flush=True)
    load_extensions()  # once for the server, not per session
    pn.serve(
        {"/": lambda: _session(data)},
        port=port,
        address=address,
        websocket_origin=origins,
        show=show,
        title="qkscale",
        threaded=False,
        static_dirs={},
    )

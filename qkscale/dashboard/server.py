"""`qkscale serve`: one Panel server, one store loaded once, one dashboard per browser session."""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import socket
import sys
import warnings
from pathlib import Path

from qkscale.dashboard import single
from qkscale.dashboard.data import DashboardData
from qkscale.dashboard.state import SessionState
from qkscale.errors import OptionError, QKScaleWarning

DEFAULT_PORT = 5006
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_THREADS = 4  # sessions' callbacks run in a pool: one slow head load does not stall the others


def is_loopback(address: str) -> bool:
    """Whether ``address`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def machine_names() -> list[str]:
    """This machine's names and addresses, as a browser on another machine may call it."""
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names.update(info[4][0] for info in socket.getaddrinfo(name, None) if info[0] == socket.AF_INET)
        except OSError:  # a name that does not resolve: keep the others
            continue
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the outgoing interface's address
        try:
            probe.connect(("10.255.255.255", 1))  # UDP: sends nothing
            names.add(probe.getsockname()[0])
        except OSError:
            pass
    return sorted(n for n in names if n and n != "0.0.0.0")


def websocket_origins(address: str, port: int, extra: list[str] | None = None) -> list[str]:
    """The HOST:PORT a browser may open the app's websocket from (Bokeh refuses the others).

    Bound to one address: that address and localhost. Bound to every interface (0.0.0.0 or
    ``::``): this machine's host names and IP addresses too. ``extra`` (--allow-websocket-origin,
    e.g. a proxy's name) replaces the list.
    """
    if extra:
        return list(extra)
    hosts = machine_names() if address in ("0.0.0.0", "::", "") else [address, "localhost"]
    return [f"{host}:{port}" for host in dict.fromkeys(hosts)]


def basic_auth_option(value: str | None) -> str | None:
    """``--basic-auth``: one password for every user, or a JSON file of user -> password (checked here)."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() == ".json" or path.is_file():
        try:
            users = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise OptionError(f"--basic-auth {value}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise OptionError(f"--basic-auth {value} is not JSON: {exc}") from None
        if not (isinstance(users, dict) and users and all(isinstance(v, str) for v in users.values())):
            raise OptionError(f'--basic-auth {value} must hold a JSON object of user -> password: {{"ann": "..."}}')
        return str(path.resolve())
    if not value:
        raise OptionError("--basic-auth needs a password or a JSON file of user -> password")
    return value


def prepare(store: str | Path) -> DashboardData:
    """Open the store, read what every session shares (vocabulary, metrics) once and compile the default drawing.

    Numba compiles Datashader's aggregation of a colouring on its first use (a few seconds of
    CPU): done here for the default colouring, so that no session's first zoom waits for it.
    """
    import holoviews  # noqa: F401 - imported here, not in the first session

    data = DashboardData(store)
    data.vocabulary, data.metrics  # noqa: B018 - read once, before the first session
    single.warm_up(SessionState.param.colour.default)
    return data


def _session(data: DashboardData):
    """One browser session's dashboard."""
    from qkscale.dashboard.app import Dashboard

    return Dashboard(data)


def serve(
    store: str | Path,
    port: int = DEFAULT_PORT,
    address: str = DEFAULT_ADDRESS,
    allow_websocket_origin: list[str] | None = None,
    show: bool = False,
    verbose: bool = False,
    basic_auth: str | None = None,
    cookie_secret: str | None = None,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Serve the dashboard of ``store`` until interrupted. Only the app is served: no file routes.

    ``verbose`` logs the server-side time of every redraw of the single-head view. ``basic_auth``:
    a password, or a JSON file of user -> password; the login cookie is signed with
    ``cookie_secret`` (a random one per start if None). ``threads``: the sessions' callback pool.
    The server writes nothing: a read-only store serves as any other.
    """
    import panel as pn

    from qkscale.dashboard.app import load_extensions

    if not 0 < port < 65536:
        raise OptionError(f"--port {port} is not a TCP port (1-65535)")
    if threads < 1:
        raise OptionError(f"--threads {threads} must be at least 1")
    auth = basic_auth_option(basic_auth)
    data = prepare(store)
    origins = websocket_origins(address, port, allow_websocket_origin)
    if not is_loopback(address) and auth is None:
        warnings.warn(
            f"--address {address}: the dashboard is reachable from other machines; use --basic-auth",
            QKScaleWarning,
            stacklevel=2,
        )
    logging.getLogger("bokeh").setLevel(logging.WARNING)
    if verbose:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("qkscale: %(message)s"))
        logger = logging.getLogger("qkscale.dashboard")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    print(f"qkscale: serving {data.store.path} at http://{address}:{port}/ (Ctrl-C to stop)", flush=True)
    load_extensions()  # once for the server, not per session
    pn.config.nthreads = threads
    login = {"basic_auth": auth, "cookie_secret": cookie_secret or secrets.token_urlsafe(32)} if auth else {}
    pn.serve(
        {"/": lambda: _session(data)},
        port=port,
        address=address,
        websocket_origin=origins,
        show=show,
        title="qkscale",
        threaded=False,  # the server runs in this thread; sessions' callbacks in the pool of pn.config.nthreads
        static_dirs={},
        **login,
    )

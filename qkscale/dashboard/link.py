"""The view a session shows, kept in its URL (``?tab=1&layer=3&head=0&method=umap``) so that a link opens it."""

from __future__ import annotations

import contextlib
import json
import threading
from urllib.parse import urlencode

import param

Synced = list[tuple[param.Parameterized, tuple[str, ...]]]


def follow_and_keep(location, synced: Synced) -> None:
    """Set ``synced`` parameters from ``location``'s query, then keep the query naming their values.

    The URL is read once, when the session opens (the page request carries it), and from then on
    only written, whole, from the parameters and under a lock. Panel's two-way ``Location.sync`` is
    not used: when two of the server's threads change the view at once, it can put an older URL
    back into the parameters (a head chosen a moment ago reverts to the one before).
    """
    query = location.query_params
    for owner, names in synced:
        for name in names:
            if name in query:
                with contextlib.suppress(ValueError, TypeError):  # a hand-edited URL: keep what it cannot name
                    setattr(owner, name, _deserialized(owner.param[name], query[name]))
    writing = threading.Lock()

    def write(*events) -> None:
        with writing:
            values = {name: _serialized(owner, name) for owner, names in synced for name in names}
            location.search = "?" + urlencode({name: value for name, value in values.items() if value is not None})

    for owner, names in synced:
        owner.param.watch(write, list(names))
    write()


def _deserialized(parameter: param.Parameter, value):
    try:
        return parameter.deserialize(value)
    except Exception:  # noqa: BLE001 - the query's own value (already parsed from JSON) is tried as it is
        return value


def _serialized(owner: param.Parameterized, name: str) -> str | None:
    value = getattr(owner, name)
    if value is None:
        return None
    value = owner.param[name].serialize(value)
    return value if isinstance(value, str) else json.dumps(value)

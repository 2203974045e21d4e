"""What a point map colours by, per point: token kind, document colour, relative position and vector norm.

Computed for a chunk of points at a time from the store's token columns (one shard at a time)
and the head's vectors, so memory is set by the chunk and the shard, never by the store.
"""

from __future__ import annotations

import numpy as np

from qkscale.store import Store
from qkscale.store.kinds import TOKEN_KINDS

DOC_COLOURS = 10  # documents coloured by number modulo this
ATTRIBUTES = {"token_kind": np.uint8, "doc_colour": np.uint8, "rel_position": np.float16, "norm": np.float32}
CATEGORIES = {"token_kind": TOKEN_KINDS, "doc_colour": [str(i) for i in range(DOC_COLOURS)]}
_TOKEN_COLUMNS = ("doc", "position", "is_special", "rel_position")


class PointAttributes:
    """``attributes(token, kind)``: the :data:`ATTRIBUTES` of points (token ids, 0 query / 1 key) of one head."""

    def __init__(self, store: Store, layer: int, head: int):
        self.store, self.layer, self.head = store, layer, head

    def __call__(self, token: np.ndarray, kind: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: np.empty(len(token), dtype) for name, dtype in ATTRIBUTES.items()}
        for mine, rows in self.store.shard_index.groups(token):
            ids = token[mine]
            local = ids - rows.start
            for name, values in self._token_attributes(rows).items():
                out[name][mine] = values[local]
            out["norm"][mine] = self._norms(ids, kind[mine])
        return out

    def _token_attributes(self, rows: slice) -> dict[str, np.ndarray]:
        store = self.store
        names = [*_TOKEN_COLUMNS, *(["patch_row"] if "patch_row" in store.token_schema.names else [])]
        table = store.token_columns(names, rows)
        column = {name: table.column(name).to_numpy() for name in names}
        kinds = store.vocabulary_classes.kinds(
            store.token_codes(rows), column["position"], column["is_special"], column.get("patch_row")
        )
        return {
            "token_kind": kinds.astype(np.uint8),
            "doc_colour": (column["doc"] % DOC_COLOURS).astype(np.uint8),
            "rel_position": column["rel_position"].astype(np.float16),
        }

    def _norms(self, ids: np.ndarray, kind: np.ndarray) -> np.ndarray:
        norms = np.empty(len(ids), np.float32)
        for code, read in ((0, self.store.queries), (1, self.store.keys)):
            mine = np.flatnonzero(kind == code)
            if len(mine):
                order = np.argsort(ids[mine], kind="stable")
                wanted = ids[mine][order]
                contiguous = wanted[-1] - wanted[0] + 1 == len(wanted)
                rows = slice(int(wanted[0]), int(wanted[-1]) + 1) if contiguous else wanted
                vectors = read(self.layer, self.head, rows).astype(np.float32)
                norms[mine[order]] = np.linalg.norm(vectors, axis=1)
        return norms

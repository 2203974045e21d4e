"""How a store holds its vectors: float16, bfloat16 or float32 (``--store-dtype``, the manifest's ``store_dtype``).

Arrow has no bfloat16, so a bfloat16 store keeps each value's bits, the upper half of its
float32, as ``uint16``. Readers give float16 vectors of a float16 store and float32 vectors of
the others (bfloat16 widens to float32 exactly).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from qkscale.stage_options import STORE_DTYPES

DEFAULT = "float16"  # what a store whose manifest names no store_dtype holds (it predates the option)

NAMES = STORE_DTYPES  # the choices of --store-dtype
_STORED = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}  # the column's values
_READ = {"float16": np.float16, "bfloat16": np.float32, "float32": np.float32}  # what readers return


def stored_numpy(dtype: str) -> np.dtype:
    """The numpy dtype of the values written to disk (``uint16`` bits for bfloat16)."""
    return np.dtype(_STORED[dtype])


def read_numpy(dtype: str) -> np.dtype:
    """The numpy dtype that readers return: float16 for float16 stores, else float32."""
    return np.dtype(_READ[dtype])


def arrow_type(dtype: str, head_dim: int) -> pa.DataType:
    """The Arrow type of one vector column: ``fixed_size_list<value>[head_dim]``."""
    return pa.list_(pa.from_numpy_dtype(stored_numpy(dtype)), head_dim)


def decode(values: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values as :func:`read_numpy` gives them (bfloat16 bits become float32; others are unchanged)."""
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values

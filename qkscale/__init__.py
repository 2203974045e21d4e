"""qkscale: AttentionViz-style joint query-key embeddings at corpus scale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qkscale.errors import QKScaleError
from qkscale.store import Store, open_store

__version__ = "0.1.0"
__all__ = ["QKScaleError", "Store", "__version__", "extract", "open_store"]

if TYPE_CHECKING:
    from qkscale.extraction import extract


def __getattr__(name: str) -> Any:
    # torch and transformers load only when extraction is asked for, not on `import qkscale`.
    if name == "extract":
        from qkscale.extraction import extract

        return extract
    raise AttributeError(f"module 'qkscale' has no attribute {name!r}")

"""A store whose strings are HTML payloads: tokens, documents, model source, a method (folder) and a metric name.

A tokenizer splits ``<script>`` into ``<``, ``script`` and ``>``, so the token strings are made by
rewriting the shards' token column after extraction (``the`` becomes an ``<img onerror>``), before
the projection writes the maps. Every payload, if it ever ran, would set ``window.__pwned`` or the
document's title.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMG = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">"
SCRIPT = "<script>window.__pwned=2;document.title='pwned'</script>"
BOLD = "<b onmouseover=window.__pwned=4>bold</b>"
METHOD = "<img src=x onerror=window.__pwned=3>"  # a folder name: no slash
METRIC = "<img src=x onerror=window.__pwned=5>"
TOKENS = {"the": IMG, "fox": SCRIPT, "dog": BOLD}  # real tokens of the corpus -> payloads
DOCUMENTS = [
    f"The quick brown fox jumps over the lazy dog {SCRIPT} and the cat.",
    f"The dog and the fox sleep in the sun {IMG} while the birds sing.",
    "The river runs past the mill, and the fox drinks from the river at night.",
    "A dog barks at the moon; the fox hides in the tall grass by the fence.",
]


def rewrite_tokens(root: Path, replace: dict[str, str]) -> None:
    """Replace token strings in every shard's token column, then rewrite the store's vocabulary."""
    from qkscale.store import layout
    from qkscale.store.files import write_parquet_atomic
    from qkscale.store.store import Store, derive_vocabulary

    for path in sorted((root / layout.SHARDS).glob(f"*/{layout.TOKENS}")):
        table = pq.read_table(path)
        tokens = [replace.get(t, t) for t in table.column("token").to_pylist()]
        index = table.schema.get_field_index("token")
        table = table.set_column(index, table.schema.field(index), pa.array(tokens, pa.string()))
        pq.write_table(table, path)
    vocabulary = pa.array(derive_vocabulary(Store(root)), pa.string())
    write_parquet_atomic(root / layout.VOCABULARY, pa.table({"token": vocabulary}))


def hostile_store(folder: Path) -> Path:
    """MiniLM over :data:`DOCUMENTS`; PCA of L0H0 and L0H1 (2D, L0H0 in 3D too) copied as method :data:`METHOD`."""
    import qkscale
    from qkscale.maps.build import MAPS
    from qkscale.maps.thumbnail import THUMBNAILS
    from qkscale.metrics import compute_metrics
    from qkscale.project import project
    from qkscale.store.metrics_files import HEADS, METRICS
    from qkscale.store.projections import PROJECTIONS

    corpus = folder / "hostile.txt"
    corpus.write_text("\n".join(DOCUMENTS) + "\n", encoding="utf-8")
    store = qkscale.extract("minilm", corpus, folder / "store", docs_per_shard=2, progress=False)
    root = store.path
    rewrite_tokens(root, TOKENS)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["model"]["source"] = SCRIPT + IMG
    (root / "manifest.json").write_text(json.dumps(manifest))
    store = qkscale.open_store(root)
    project(store, method="pca", layers=[0], heads=[0, 1], progress=False)
    project(store, method="pca", dims=3, layers=[0], heads=[0], progress=False)
    compute_metrics(store, progress=False)
    for part in (PROJECTIONS, MAPS, THUMBNAILS):
        for dims in (2, 3):
            source = root / part / f"pca-{dims}d"
            if source.is_dir():
                shutil.copytree(source, root / part / f"{METHOD}-{dims}d")
    heads = pq.read_table(root / METRICS / HEADS)
    names = [METRIC if name == "entropy" else name for name in heads.column_names]
    pq.write_table(heads.rename_columns(names), root / METRICS / HEADS)
    return root

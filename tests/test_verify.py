"""`qkscale verify` finds every damaged file of a store; `--repair` ends with a store equal to an undamaged one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import qkscale
from qkscale.errors import QKScaleWarning, StoreError
from qkscale.maps.build import map_path
from qkscale.maps.thumbnail import thumbnail_path
from qkscale.metrics import compute_metrics
from qkscale.project import project
from qkscale.store import layout
from qkscale.store.projections import list_projections, projection_path


def truncate(path: Path, keep: float = 0.5) -> None:
    with path.open("r+b") as handle:
        handle.truncate(int(path.stat().st_size * keep))


def poison_vectors(shard: Path, column: str, row: int) -> None:
    """Rewrite a shard's vectors.arrow with one value of ``column`` at ``row`` set to NaN."""
    path = shard / layout.VECTORS
    with pa.OSFile(str(path)) as source:  # read into memory: the file is rewritten below
        table = ipc.open_file(source).read_all()
    values = table.column(column).combine_chunks()
    flat = values.flatten().to_numpy().copy()
    flat[row * values.type.list_size] = np.nan
    poisoned = pa.FixedSizeListArray.from_arrays(pa.array(flat), values.type.list_size)
    table = table.set_column(table.schema.get_field_index(column), column, poisoned)
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64)


def poison_projection(path: Path) -> None:
    """Rewrite a projection with one NaN x coordinate, keeping its record."""
    table = pq.read_table(path)
    x = table.column("x").to_numpy().copy()
    x[3] = np.nan
    poisoned = table.set_column(table.schema.get_field_index("x"), "x", pa.array(x, pa.float32()))
    record = {b"qkscale": pq.read_metadata(path).metadata[b"qkscale"]}
    pq.write_table(poisoned.replace_schema_metadata(record), path)


@pytest.fixture(scope="module")
def reference(builtin_store, tmp_path_factory) -> qkscale.Store:
    """The builtin store with PCA projections of layer 0, a UMAP head and metrics: undamaged."""
    store = qkscale.open_store(shutil.copytree(builtin_store.path, tmp_path_factory.mktemp("verify") / "store"))
    project(store, method="pca", layers=[0], progress=False)
    project(store, method="umap", layers=[1], heads=[0], sample=300, progress=False)
    compute_metrics(store, progress=False)
    return store


@pytest.fixture
def copy(reference, tmp_path) -> Path:
    return shutil.copytree(reference.path, tmp_path / "store")


DAMAGE = {  # what is damaged -> (how, the file verify names)
    "truncated vectors": (lambda s: truncate(s / "shards/00000/vectors.arrow"), "shards/00000/vectors.arrow"),
    "no shard.json": (lambda s: os.remove(s / "shards/00001/shard.json"), "shards/00001"),
    "NaN vector": (lambda s: poison_vectors(s / "shards/00002", "k.3.5", 17), "shards/00002/vectors.arrow"),
    "truncated projection": (
        lambda s: truncate(projection_path(s, "pca", 2, 0, 3), 0.9),
        "projections/pca-2d/L000-H003.parquet",
    ),
    "NaN coordinate": (
        lambda s: poison_projection(projection_path(s, "umap", 2, 1, 0)),
        "projections/umap-2d/L001-H000.parquet",
    ),
    "garbage thumbnail": (
        lambda s: thumbnail_path(s, "pca", 2, 0, 5).write_bytes(b"not a png"),
        "thumbnails/pca-2d/L000-H005.png",
    ),
    "truncated map": (lambda s: truncate(map_path(s, "pca", 2, 0, 6) / "x.npy"), "maps/pca-2d/L000-H006"),
    "garbage metrics": (
        lambda s: (s / "metrics/similarity.parquet").write_bytes(b"PAR1"),
        "metrics/similarity.parquet",
    ),
    "damaged job record": (lambda s: (s / "job.json").write_text('{"state": '), "job.json"),
    "truncated vocabulary": (lambda s: truncate(s / layout.VOCABULARY), layout.VOCABULARY),
}


def test_a_sound_store_verifies(reference, run_cli):
    code, stdout, _ = run_cli("verify", reference.path)
    assert code == 0 and "store is sound" in stdout


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_each_damage_is_one_line_and_exit_1(copy, run_cli, kind):
    damage, named = DAMAGE[kind]
    damage(copy)
    code, stdout, _ = run_cli("verify", copy)
    lines = stdout.strip().splitlines()
    assert code == 1, stdout
    assert len(lines) == 2 and lines[0].startswith(f"{named}: ") and "1 problem(s)" in lines[1], stdout


def _assert_equal_stores(repaired: qkscale.Store, reference: qkscale.Store) -> None:
    pd.testing.assert_frame_equal(repaired.tokens, reference.tokens)
    pd.testing.assert_frame_equal(repaired.documents, reference.documents)
    for layer in reference.layers:
        for head in reference.heads:
            np.testing.assert_array_equal(repaired.queries(layer, head), reference.queries(layer, head))
            np.testing.assert_array_equal(repaired.keys(layer, head), reference.keys(layer, head))
    assert list_projections(repaired.path) == list_projections(reference.path)
    for key, heads in list_projections(reference.path).items():
        method, dims = key.split("-")[0], int(key.split("-")[1][0])
        for layer, head in heads:
            pd.testing.assert_frame_equal(
                repaired.projection(layer, head, method, dims), reference.projection(layer, head, method, dims)
            )
            assert (
                thumbnail_path(repaired.path, method, dims, layer, head).read_bytes()
                == thumbnail_path(reference.path, method, dims, layer, head).read_bytes()
            )
            for column in sorted(map_path(reference.path, method, dims, layer, head).glob("*.npy")):
                twin = map_path(repaired.path, method, dims, layer, head) / column.name
                np.testing.assert_array_equal(np.load(twin), np.load(column))
    pd.testing.assert_frame_equal(repaired.metrics, reference.metrics)
    pd.testing.assert_frame_equal(repaired.head_similarity, reference.head_similarity)
    keep = ("complete", "n_tokens", "truncated_docs", "layers", "model", "options", "corpus", "score_scale")
    assert {k: repaired.manifest[k] for k in keep} == {k: reference.manifest[k] for k in keep}


def test_repair_of_everything_at_once_equals_the_undamaged_store(copy, reference, run_cli):
    for damage, _ in DAMAGE.values():
        damage(copy)
    code, stdout, _ = run_cli("verify", copy, "--json")
    report = json.loads(stdout)
    assert code == 1 and report["left"] is None
    assert sorted(p["file"] for p in report["problems"]) == sorted(named for _, named in DAMAGE.values())

    code, stdout, stderr = run_cli("verify", copy, "--repair")
    assert code == 0, stdout + stderr
    assert f"repaired {len(DAMAGE)} problem(s): the store is sound" in stdout
    assert "repair: shards/00000: set aside as damaged/shards/00000." in stdout
    assert run_cli("verify", copy)[0] == 0
    assert (copy / "damaged" / "shards").is_dir(), "damaged parts are kept aside, not deleted"
    _assert_equal_stores(qkscale.open_store(copy), reference)


READER_DAMAGE = {
    **DAMAGE,
    "garbage metrics": (lambda s: (s / "metrics/heads.parquet").write_bytes(b"PAR1"), "metrics/heads.parquet"),
}


@pytest.mark.parametrize(
    "kind", ["truncated vectors", "truncated projection", "garbage metrics", "truncated vocabulary"]
)
def test_readers_of_a_damaged_file_say_one_line(copy, run_cli, kind):
    damage, named = READER_DAMAGE[kind]
    damage(copy)
    verbs = {
        "truncated vectors": [("metrics", "--force"), ("project", "--method", "pca", "--layers", "0", "--force")],
        "truncated projection": [("project", "--method", "pca", "--layers", "0")],
        "garbage metrics": [("metrics",)],
        "truncated vocabulary": [("project", "--method", "pca", "--layers", "2", "--heads", "0")],
    }[kind]
    for verb, *args in verbs:
        code, _, stderr = run_cli(verb, copy, *args)
        errors = [line for line in stderr.splitlines() if line.startswith("qkscale: error: ")]
        assert code == 2 and len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
        assert named in errors[0] and "Traceback" not in stderr
    if kind == "truncated projection":
        with pytest.raises(StoreError, match="L000-H003.parquet cannot be read"):
            qkscale.open_store(copy).projection(0, 3, "pca", 2)


def test_plain_resume_redoes_a_shard_without_its_info(copy, reference):
    os.remove(copy / "shards/00001/shard.json")
    with pytest.warns(QKScaleWarning, match="shard 1 has no shard.json: set aside"):
        resumed = qkscale.extract(out=copy, limit_docs=60, docs_per_shard=25, batch_size=16, progress=False)
    assert resumed.complete
    np.testing.assert_array_equal(resumed.queries(2, 7), reference.queries(2, 7))


BAD_FIELDS = {
    "model.n_kv_heads": lambda m: m["model"].update(n_kv_heads=0),
    "score_scale": lambda m: m.update(score_scale=m["score_scale"][:2]),
    "format_version": lambda m: m.update(format_version=99),
    "layers": lambda m: m.update(layers=[0, 9]),
    "attention_window": lambda m: m.update(attention_window=[None]),
    "model.head_dim": lambda m: m["model"].update(head_dim="32"),
    "store_dtype": lambda m: m.update(store_dtype="float64"),
}


@pytest.mark.parametrize("field", list(BAD_FIELDS))
def test_a_bad_manifest_field_is_named_in_one_line(copy, run_cli, field):
    manifest = json.loads((copy / layout.MANIFEST).read_text())
    BAD_FIELDS[field](manifest)
    (copy / layout.MANIFEST).write_text(json.dumps(manifest))
    for verb in ("inspect", "metrics"):
        code, _, stderr = run_cli(verb, copy)
        assert code == 2 and len(stderr.strip().splitlines()) == 1
        assert f"field '{field}'" in stderr, stderr
    code, stdout, _ = run_cli("verify", copy)
    assert code == 1 and f"manifest.json: field '{field}'" in stdout
    code, _, stderr = run_cli("verify", copy, "--repair")
    assert code == 2 and "fix this field by hand" in stderr


def test_complete_manifest_with_a_missing_shard(copy, reference, run_cli):
    shutil.rmtree(copy / "shards/00002")
    code, _, stderr = run_cli("inspect", copy)
    assert code == 2 and "says it is complete but lacks 1 shard(s), first 2" in stderr
    code, stdout, _ = run_cli("verify", copy, "--repair")
    assert code == 0, stdout
    np.testing.assert_array_equal(qkscale.open_store(copy).keys(5, 0), reference.keys(5, 0))


def test_damaged_job_record_makes_status_say_so(copy, run_cli):
    (copy / "job.json").write_text("{")
    code, _, stderr = run_cli("status", copy)
    assert code == 2 and stderr.startswith("qkscale: error: job record") and "is unreadable" in stderr

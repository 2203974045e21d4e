"""Jobs on real Dask clusters: 2 worker processes equal one process, resume, a killed worker, submit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import qkscale
from qkscale.cluster import connect
from qkscale.jobs import JobError, job_status, parse_spec, read_job
from qkscale.jobs.run import new_job_id, run_job

# The extraction options of every job here, and of the single-process store they must equal.
EXTRACT = {"limit_docs": 160, "batch_size": 16, "max_length": 48}
DOCS_PER_SHARD = 10
BAD_JSON = "{"


def _spec(name: str, out: Path, **overrides) -> dict:
    spec = {
        "name": name,
        "model": "minilm",
        "corpus": "builtin",
        "out": str(out),
        "extract": dict(EXTRACT),
        "sampling": {"docs_per_shard": DOCS_PER_SHARD},
        "projection": {"methods": ["pca"], "dims": [2], "layers": "5", "heads": "0-1"},
        "metrics": True,
        "cluster": {"kind": "local", "workers": 2, "threads": 1},
    }
    spec.update(overrides)
    return spec


def _write(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def single_store(tmp_path_factory):
    """The reference: one process, `qkscale.extract` with the jobs' options."""
    out = tmp_path_factory.mktemp("single") / "store"
    return qkscale.extract("minilm", "builtin", out, docs_per_shard=DOCS_PER_SHARD, progress=False, **EXTRACT)


@pytest.fixture(scope="module")
def cluster():
    """A real LocalCluster of 2 worker processes (1 thread each), shared by this module's tests."""
    with connect("local", workers=2, threads=1) as connected:
        yield connected


def _assert_same_store(store, reference) -> None:
    """Same token table (no (doc, position) twice) and the same vectors for every head."""
    tokens, expected = store.tokens, reference.tokens
    assert not tokens.duplicated(["doc", "position"]).any()
    assert tokens.equals(expected)
    for layer in reference.layers:
        for head in range(reference.n_heads):
            assert np.array_equal(store.queries(layer, head), reference.queries(layer, head))
            assert np.array_equal(store.keys(layer, head), reference.keys(layer, head))


def _run_in_thread(spec, cluster, out: Path) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["summary"] = run_job(spec, cluster, out, new_job_id(spec), "local")
        except BaseException as exc:  # reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _wait_for(condition, timeout: float = 120, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(interval)


def _committed(out: Path) -> int:
    return len(list((out / "shards").glob("[0-9]*/shard.json")))


def test_two_workers_equal_one_process(tmp_path, single_store, cluster):
    spec = parse_spec(_spec("two", tmp_path / "s"))
    summary = run_job(spec, cluster, tmp_path / "s", new_job_id(spec), "local")
    store = qkscale.open_store(tmp_path / "s")
    _assert_same_store(store, single_store)
    assert summary.tokens == store.n_tokens and summary.heads_projected == 2
    assert store.has_metrics and len(store.projections()["pca-2d"]) == 2
    assert read_job(tmp_path / "s")["state"] == "done"
    again = run_job(spec, cluster, tmp_path / "s", new_job_id(spec), "local")  # resume: nothing left to do
    assert again.tokens == 0 and again.heads_projected == 0


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(tmp_path, single_store, cluster):
    spec = parse_spec(_spec("killed", tmp_path / "s", projection=None, metrics=False))
    before = cluster.client.run(os.getpid)
    thread, outcome = _run_in_thread(spec, cluster, tmp_path / "s")
    _wait_for(lambda: _committed(tmp_path / "s") >= 2)
    victim = next(iter(before.values()))
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    assert _committed(tmp_path / "s") == 16  # the kill happened mid-job: shards were still to come
    _assert_same_store(qkscale.open_store(tmp_path / "s"), single_store)
    _wait_for(lambda: len(cluster.client.scheduler_info()["workers"]) == 2, timeout=60)
    assert victim not in cluster.client.run(os.getpid).values()  # the nanny started a new worker


def test_interrupted_run_resumes(tmp_path, single_store):
    spec_file = _write(tmp_path / "job.yaml", _spec("resumed", tmp_path / "s"))
    command = [sys.executable, "-m", "qkscale.cli", "run", str(spec_file)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _committed(tmp_path / "s") >= 1, timeout=180)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert "interrupted; rerun the same command to resume" in err
    assert 1 <= _committed(tmp_path / "s") < 16
    assert read_job(tmp_path / "s")["state"] == "interrupted"
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "job done" in second.stdout
    _assert_same_store(qkscale.open_store(tmp_path / "s"), single_store)


def test_a_shard_that_keeps_failing_ends_the_job(tmp_path, cluster):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(24):
        Image.fromarray(np.full((40, 40, 3), index * 10, np.uint8)).save(folder / f"{index:02d}.png")
    model = _tiny_vit(tmp_path / "vit")
    spec = parse_spec(
        _spec(
            "failing",
            tmp_path / "s",
            model=str(model),
            corpus=str(folder),
            extract={"batch_size": 2},
            sampling={"docs_per_shard": 1},
            projection=None,
            metrics=False,
        )
    )
    thread, outcome = _run_in_thread(spec, cluster, tmp_path / "s")
    _wait_for(lambda: (read_job(tmp_path / "s") or {}).get("shards_total") == 24, interval=0.005)
    (folder / "23.png").write_bytes(b"no longer a picture")  # bad data the workers meet mid-job
    thread.join(timeout=300)
    error = outcome.get("error")
    assert isinstance(error, JobError), error
    assert str(error).startswith("shard 23 (documents 23-23) failed: CorpusError: "), "bad input is not tried again"
    assert read_job(tmp_path / "s")["state"] == "failed"
    assert not qkscale.open_store(tmp_path / "s").complete


def _tiny_vit(folder: Path) -> Path:
    import torch
    from transformers import AutoModel, ViTConfig

    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(folder)
    return folder


def test_submit_then_status_until_done(tmp_path, single_store, dask_processes, run_cli):
    spec_file = _write(tmp_path / "job.yaml", _spec("submitted", tmp_path / "s"))
    _wait_for(lambda: _answers(dask_processes), timeout=60, interval=0.5)
    code, out, err = run_cli("submit", spec_file, "--scheduler", dask_processes)
    assert code == 0, err
    assert out.startswith("submitted job submitted-") and f"qkscale status {tmp_path / 's'}" in out
    states = []

    def done() -> bool:
        code, out, _ = run_cli("status", tmp_path / "s", "--json")
        assert code == 0
        states.append(json.loads(out)["state"])
        assert states[-1] in ("running", "done"), json.loads(out)["failures"]
        return states[-1] == "done"

    _wait_for(done, timeout=300, interval=1)
    assert states[0] == "running"  # submit returned while the job went on
    status = job_status(tmp_path / "s")
    assert status["shards_done"] == status["shards_total"] == 16 and status["heads_done"] == 2
    _assert_same_store(qkscale.open_store(tmp_path / "s"), single_store)


def _answers(address: str) -> bool:
    from distributed import Client

    try:
        with Client(address, timeout=2) as client:
            return len(client.scheduler_info()["workers"]) == 2
    except OSError:
        return False


# -- errors --------------------------------------------------------------------------------------
SPEC_ERRORS = [
    ({"nme": "x"}, "unknown field 'nme'"),
    ({"name": None}, "missing field 'name'"),
    ({"extract": {"batch_size": "many"}}, "extract.batch_size: expected an integer, got 'many'"),
    ({"extract": {"batch_size": 0}}, "extract.batch_size: expected a positive integer, got 0"),
    ({"extract": {"batchsize": 8}}, "unknown field 'extract.batchsize'"),
    ({"metrics": "yes"}, "metrics: expected true/false, got 'yes'"),
    ({"projection": {"methods": ["tsnee"]}}, "projection.methods: unknown method 'tsnee'"),
    ({"projection": {"dims": [4]}}, "projection.dims: expected 2 or 3, got 4"),
    ({"cluster": {"kind": "slurm"}}, "cluster.kind: expected one of local, local-cuda, address, got 'slurm'"),
    ({"cluster": {"kind": "address"}}, "cluster.address: kind 'address' needs a scheduler address"),
    ({"model": "/nonexistent/model"}, "model path /nonexistent/model does not exist"),
    ({"corpus": "/nonexistent/corpus.txt"}, "corpus path /nonexistent/corpus.txt does not exist"),
]


@pytest.mark.parametrize(("change", "message"), SPEC_ERRORS)
def test_bad_specs_fail_with_one_line_naming_the_field(change, message, tmp_path, run_cli):
    spec = {**_spec("bad", tmp_path / "s"), **change}
    spec_file = _write(tmp_path / "bad.yaml", spec)
    code, out, err = run_cli("run", spec_file)
    assert code == 2 and out == "", err
    assert err.startswith("qkscale: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "s").exists()


def test_spec_that_is_not_yaml(tmp_path, run_cli):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    code, _, err = run_cli("run", tmp_path / "bad.yaml")
    assert code == 2 and err.startswith(f"qkscale: error: job spec {tmp_path / 'bad.yaml'} is not valid YAML")


def test_unreachable_scheduler(tmp_path, run_cli, unused_port):
    address = f"tcp://127.0.0.1:{unused_port}"
    spec_file = _write(tmp_path / "job.yaml", _spec("unreachable", tmp_path / "s"))
    started = time.monotonic()
    code, _, err = run_cli("submit", spec_file, "--scheduler", address)
    assert code == 2
    assert err.startswith(f"qkscale: error: no Dask scheduler answered at {address} within 10 s")
    assert time.monotonic() - started < 30
    assert not (tmp_path / "s").exists()


def test_local_cuda_without_dask_cuda_or_gpus(tmp_path, run_cli):
    spec_file = _write(tmp_path / "job.yaml", _spec("cuda", tmp_path / "s"))
    code, _, err = run_cli("run", spec_file, "--scheduler", "local-cuda")
    assert code == 2
    assert "local-cuda needs dask-cuda" in err or "local-cuda needs CUDA GPUs" in err


def test_store_of_another_job_is_refused(tmp_path, cluster):
    spec = parse_spec(_spec("first", tmp_path / "s", projection=None, metrics=False, extract={"limit_docs": 20}))
    run_job(spec, cluster, tmp_path / "s", new_job_id(spec), "local")
    other = parse_spec(_spec("second", tmp_path / "s", projection=None, metrics=False, extract={"limit_docs": 20}))
    with pytest.raises(JobError, match="belongs to job 'first'"):
        run_job(other, cluster, tmp_path / "s", new_job_id(other), "local")


WORKFLOWS = sorted((Path(__file__).parent.parent / "workflows").glob("*.yaml"))


def test_every_workflow_is_a_valid_documented_spec():
    from qkscale.jobs import load_spec

    names = {path.name for path in WORKFLOWS}
    assert {"demo.yaml", "bert-corpus.yaml", "gpt2-corpus.yaml", "multi-gpu.yaml"} <= names
    assert {"vit-images.yaml", "llama-corpus.yaml"} <= names
    for path in WORKFLOWS:
        spec = load_spec(path)
        assert spec.name == path.stem
        assert path.read_text().startswith(f"# {spec.name}: "), f"{path.name} must say what it does at its top"
    demo = load_spec(Path(__file__).parent.parent / "workflows" / "demo.yaml")
    assert (demo.model, demo.corpus, demo.metrics) == ("minilm", "builtin", True)
    assert demo.projection.layers is None and demo.projection.heads is None  # every head


# -- one engine: the same stages as the CLI, failures named, tasks that carry ids only -------------
def _rewrite_vectors(shard_dir: Path, change) -> None:
    """Replace a committed shard's vectors.arrow by ``change(table)`` (same schema): damage for the tests."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    path = shard_dir / "vectors.arrow"
    table = change(ipc.open_file(pa.BufferReader(path.read_bytes())).read_all())
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _copy_store(reference, out: Path):
    import shutil

    shutil.copytree(reference.path, out)
    return qkscale.open_store(out)


def test_a_job_with_the_generic_adapter_equals_extract_with_the_same_flags(tmp_path, cluster, run_cli):
    from conftest import _save_tiny_encoder

    electra = _save_tiny_encoder(tmp_path / "electra", "electra")
    adapter = {
        "q_module": "encoder.layer.{layer}.attention.self.query",
        "k_module": "encoder.layer.{layer}.attention.self.key",
        "bucket": False,
        "limit_docs": 40,
        "max_length": 32,
        "batch_size": 8,
    }
    code, _, err = run_cli(
        "extract", "--model", electra, "--corpus", "builtin", "--out", tmp_path / "cli", "--docs-per-shard", "10",
        "--q-module", adapter["q_module"], "--k-module", adapter["k_module"], "--no-bucket",
        "--limit-docs", "40", "--max-length", "32", "--batch-size", "8",
    )  # fmt: skip
    assert code == 0, err
    spec = parse_spec(
        _spec(
            "generic",
            tmp_path / "job",
            model=str(electra),
            extract=adapter,
            sampling={"docs_per_shard": 10},
            projection=None,
            metrics=False,
        )
    )
    run_job(spec, cluster, tmp_path / "job", new_job_id(spec), "local")
    store, reference = qkscale.open_store(tmp_path / "job"), qkscale.open_store(tmp_path / "cli")
    assert store.manifest["model"]["family"] == "generic" and store.manifest["options"]["bucket"] is False
    assert (
        store.manifest["model"] == reference.manifest["model"]
        and store.manifest["options"] == reference.manifest["options"]
    )
    _assert_same_store(store, reference)


def test_a_failing_projection_stops_the_job_naming_the_head(tmp_path, single_store, cluster):
    import pyarrow as pa

    out = tmp_path / "s"
    _copy_store(single_store, out)

    def poison(table):  # every query of L5H0 in this shard is NaN: that head's fit cannot succeed
        column = table.schema.get_field_index("q.5.0")
        nan = pa.array(np.full(len(table) * single_store.head_dim, np.nan, np.float16))
        values = pa.FixedSizeListArray.from_arrays(nan, single_store.head_dim)
        return table.set_column(column, table.schema.field(column), values)

    _rewrite_vectors(out / "shards" / "00003", poison)
    spec = parse_spec(_spec("poisoned", out, metrics=False))  # PCA of L5 H0-1
    with pytest.raises(JobError) as error:
        run_job(spec, cluster, out, new_job_id(spec), "local")
    assert str(error.value).startswith("head L5H0 pca-2d failed: NonFiniteError: "), error.value
    assert read_job(out)["state"] == "failed"
    assert not list(out.rglob(".tmp-*"))


def test_a_failing_metrics_unit_stops_the_job_and_the_cli_naming_the_shard(tmp_path, single_store, cluster, run_cli):
    last = single_store.manifest["n_shards"] - 1

    def truncate(table):  # the last shard loses a head's queries (rows still agree): its metrics cannot be computed
        return table.rename_columns([f"lost_{table.column_names[0]}", *table.column_names[1:]])

    for name in ("job", "cli"):
        _copy_store(single_store, tmp_path / name)
        _rewrite_vectors(tmp_path / name / "shards" / f"{last:05d}", truncate)
    spec = parse_spec(_spec("damaged", tmp_path / "job", projection=None))
    with pytest.raises(JobError) as error:
        run_job(spec, cluster, tmp_path / "job", new_job_id(spec), "local")
    assert str(error.value).startswith(f"metrics of shard {last} failed: StoreError: "), error.value
    code, _, err = run_cli("metrics", tmp_path / "cli")  # the serial executor: the same policy, the same line
    last_line = err.strip().splitlines()[-1]  # after the progress bar
    assert code == 2 and last_line.startswith(f"qkscale: error: metrics of shard {last} failed: StoreError: ")
    assert not (tmp_path / "job" / "metrics").exists() and not (tmp_path / "cli" / "metrics").exists()


def test_tasks_receive_unit_ids_not_documents(tmp_path, cluster):
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskArguments(SchedulerPlugin):
        """Records the pickled size and arguments of every qkscale task the scheduler is given."""

        def __init__(self):
            self.seen: list[tuple[str, int, str]] = []

        def update_graph(self, scheduler, *, keys, **kwargs) -> None:
            import pickle

            for key in keys:
                task = scheduler.tasks.get(key)
                if task is not None and str(key).startswith("qkscale-"):
                    self.seen.append((str(key), len(pickle.dumps(task.run_spec)), repr(task.run_spec)))

    cluster.client.register_plugin(TaskArguments(), name="task-arguments")
    spec = parse_spec(_spec("ids", tmp_path / "s", extract={"limit_docs": 40}))
    run_job(spec, cluster, tmp_path / "s", new_job_id(spec), "local")
    seen = cluster.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["task-arguments"].seen)
    extract_tasks = [task for task in seen if task[0].startswith("qkscale-extract")]
    assert len(extract_tasks) == 4 and len(seen) == 4 + 4 + 2  # shards, metrics of each shard, heads
    texts = qkscale.open_store(tmp_path / "s").documents["text"]
    for key, size, arguments in seen:
        assert size < 1000, (key, size)  # a function, a plugin name and a unit id
        assert not any(text[:30] in arguments for text in texts), key


def test_a_store_made_by_an_earlier_job_still_belongs_to_its_spec():
    """The fingerprint that `job.json` records: the demo's was this before options were declared once."""
    from qkscale.jobs import load_spec

    demo = load_spec(Path(__file__).parent.parent / "workflows" / "demo.yaml")
    assert demo.fingerprint() == "48b531e314d754e4"
    for newer in ({"bucket": False}, {"store_dtype": "float32"}):
        changed = parse_spec({**demo.as_dict(), "extract": {**demo.as_dict()["extract"], **newer}})
        assert changed.fingerprint() != demo.fingerprint()  # a newer option, once set, counts


def test_a_local_cluster_leaves_this_process_environment_alone():
    """Dask's nannies set OMP_NUM_THREADS=1 for their workers: not for this process and its subprocesses."""
    before = dict(os.environ)
    with connect("local", workers=1, threads=1):
        assert dict(os.environ) == before
    assert dict(os.environ) == before

"""Every user error: one line on stderr, exit code 2, nothing written, existing stores untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (root / "binary.txt").write_bytes(b"\x7fELF\x00\x00\x01binary")
    (root / "empty.txt").write_text("\n\n", encoding="utf-8")
    (root / "good.txt").write_text("A short document.\nAnother one here.\n", encoding="utf-8")
    (root / "not-a-store").mkdir()
    (root / "not-a-store" / "precious.txt").write_text("keep me", encoding="utf-8")
    (root / "a-file").write_text("x", encoding="utf-8")
    t5 = root / "t5-model"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32, "num_heads": 2}))
    return root


CASES = [
    # (name, extra args, expected message part); {root} is the bad-inputs folder
    ("missing model", ["--model", "{root}/nope"], "model path {root}/nope does not exist"),
    (
        "unsupported architecture",
        ["--model", "{root}/t5-model"],
        "unsupported architecture 't5'; supported: bert, deit, dinov2, dinov2_with_registers, distilbert, gpt2, "
        "llama, mistral, qwen2, roberta, vit",
    ),
    ("missing corpus", ["--corpus", "{root}/nope.txt"], "does not exist"),
    ("empty corpus", ["--corpus", "{root}/empty.txt"], "holds no documents"),
    ("non-UTF-8 file", ["--corpus", "{root}/latin1.txt"], "line 1 is not UTF-8 text"),
    ("binary file", ["--corpus", "{root}/binary.txt"], "is a binary file"),
    ("layers out of range", ["--layers", "0,6"], "--layers 0,6 is out of range: the model has layers 0-5"),
    ("bad layers", ["--layers", "two"], "is not a list like 0,2-4"),
    ("max length above model", ["--max-length", "4096"], "exceeds the model's 512 positions"),
    ("half precision on CPU", ["--device", "cpu", "--dtype", "float16"], "needs a CUDA device"),
    ("unknown device", ["--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    ("zero batch size", ["--batch-size", "0"], "--batch-size must be a positive number"),
    ("out under a file", ["--out", "{root}/a-file/store"], "cannot be created: {root}/a-file is not a writable folder"),
]


@pytest.mark.parametrize(("name", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_extract_errors_write_nothing(run_cli, bad_inputs, tmp_path, name, args, message):
    out = tmp_path / "store"
    root = str(bad_inputs)
    args = [a.format(root=root) for a in args]
    if "--corpus" not in args:
        args += ["--corpus", f"{root}/good.txt"]
    if "--out" not in args:
        args += ["--out", str(out)]
    code, stdout, stderr = run_cli("extract", *args)
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("qkscale: error: ")
    assert message.format(root=root) in stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists()


@pytest.mark.parametrize("target", ["not-a-store", "a-file"])
def test_out_that_is_not_a_store_is_refused_and_left_alone(run_cli, bad_inputs, target):
    before = _snapshot(bad_inputs)
    code, _, stderr = run_cli("extract", "--out", bad_inputs / target, "--corpus", bad_inputs / "good.txt")
    assert code == 2 and "is not a qkscale store" in stderr and stderr.count("\n") == 1
    assert _snapshot(bad_inputs) == before


def test_resuming_with_another_model_or_corpus_is_refused(run_cli, bad_inputs, tmp_path, tiny_models):
    out = tmp_path / "store"
    code, _, _ = run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt")
    assert code == 0
    before = _snapshot(out)
    code, _, stderr = run_cli(
        "extract", "--out", out, "--corpus", bad_inputs / "good.txt", "--model", tiny_models["gpt2"]
    )
    assert code == 2 and "was made with another model (source: minilm there" in stderr and stderr.count("\n") == 1
    code, _, stderr = run_cli("extract", "--out", out, "--corpus", "builtin")
    assert code == 2 and "was made with another corpus" in stderr
    code, _, stderr = run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt", "--layers", "0")
    assert code == 2 and "was made with another layers" in stderr
    code, _, stderr = run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt", "--batch-size", "8")
    assert code == 2 and "another options (batch_size: 64 there, 8 now)" in stderr
    assert _snapshot(out) == before
    code, stdout, _ = run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt")  # same settings: no-op
    assert code == 0 and "complete" in stdout and _snapshot(out) == before


def test_manifest_from_another_version_is_refused_cleanly(run_cli, bad_inputs, tmp_path):
    out = tmp_path / "store"
    assert run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt")[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["options"]["future_option"] = 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = run_cli("extract", "--out", out, "--corpus", bad_inputs / "good.txt")
    assert code == 2 and "another options (future_option: 1 there, None now)" in stderr


def test_roberta_position_limit(run_cli, bad_inputs, tmp_path, tiny_models):
    # 130 position embeddings, padding index 0: positions 1..129, so at most 129 tokens.
    args = ["extract", "--model", tiny_models["roberta"], "--corpus", bad_inputs / "good.txt", "--out", tmp_path / "s"]
    code, _, stderr = run_cli(*args, "--max-length", "130")
    assert code == 2 and "exceeds the model's 129 positions" in stderr and not (tmp_path / "s").exists()
    code, _, stderr = run_cli(*args, "--max-length", "129")
    assert code == 0, stderr


def test_usage_errors_are_one_line(run_cli):
    for args in (["extract"], ["extract", "--out", "x", "--bogus"], ["frobnicate"]):
        code, _, stderr = run_cli(*args)
        assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("qkscale: error: ")


def test_inspect_missing_store(run_cli, tmp_path):
    code, _, stderr = run_cli("inspect", tmp_path / "nothing")
    assert code == 2 and "does not exist" in stderr


def test_help_lists_verbs(run_cli):
    code, stdout, _ = run_cli("--help")
    assert code == 0 and "extract" in stdout and "inspect" in stdout

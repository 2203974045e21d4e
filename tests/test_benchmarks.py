"""The benchmark suite's plumbing: figures with spreads and ratios, JSON and plots (tiny sizes; no timing asserted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import gpu, headline, projection, rendering
from benchmarks.__main__ import parse_args
from benchmarks.corpora import write_windows
from benchmarks.report import figure, machine, versions


def test_a_figure_has_its_spread_and_its_ratio_to_the_baseline():
    result = figure([3.0, 1.0, 2.0], "s", baseline=[4.0, 8.0, 6.0], points=10)
    assert (result["min"], result["median"], result["max"], result["n"]) == (1.0, 2.0, 3.0, 3)
    assert result["ratio_to_baseline"] == pytest.approx(2.0 / 6.0)
    assert result["points"] == 10 and "ratio_to_baseline" not in figure([1.0], "s")


def test_machine_and_versions_are_reported():
    assert machine()["cpu_count"] >= 1
    found = versions()
    assert found["numpy"] and found["datashader"] and "no-such-package" not in found


def test_rendering_benchmark_writes_figures_and_a_plot(tmp_path):
    out = tmp_path / "rendering.json"
    rendering.main(["--sizes", "5000,20000", "--repeats", "1", "--scatter-limit", "5000", "--out", str(out)])
    report = json.loads(out.read_text())
    sizes = report["sections"]["rendering"]["sizes"]
    assert set(sizes) == {"5000", "20000"}
    assert "matplotlib scatter" in sizes["5000"] and "matplotlib scatter" not in sizes["20000"]
    assert sizes["5000"]["datashader by query/key"]["ratio_to_baseline"] > 0
    assert sizes["20000"]["datashader count"]["points"] == 20000
    assert (tmp_path / "rendering.png").stat().st_size > 1000
    assert report["machine"]["cpu_count"] and report["versions"]["datashader"]


def test_suite_arguments():
    assert parse_args([]).suite == "quick"
    with pytest.raises(SystemExit):
        parse_args(["--suite", "huge"])


def test_projection_benchmark_compares_qkscale_with_a_full_fit(builtin_store, tmp_path):
    out, store = tmp_path / "projection.json", tmp_path / "store"
    shutil.copytree(builtin_store.path, store)  # the whole-head row writes its projection into the store
    argv = ["--store", str(store), "--layer", "3", "--head", "0", "--methods", "pca"]
    projection.main([*argv, "--sizes", "1000,100000", "--sample", "1500", "--out", str(out)])
    results = json.loads(out.read_text())["sections"]["projection"]["results"]
    variants = {(r["size"], r["variant"]) for r in results}
    assert variants == {(1000, "qkscale"), (100000, "qkscale project (end to end)"), (100000, "full fit")}
    small, whole = results[0], results[1]
    assert small["n_fitted"] == small["points"] <= 1500 < whole["points"] == 2 * builtin_store.n_tokens
    assert "ratio_to_full_fit" in whole and 0.5 < whole["trustworthiness"] <= 1
    assert (tmp_path / "projection.png").stat().st_size > 1000


def test_windowed_corpus_joins_consecutive_builtin_sentences(tmp_path):
    from qkscale.corpus.builtin import builtin_sentences

    path = write_windows(tmp_path / "windows.txt", width=3)
    lines = path.read_text(encoding="utf-8").split("\n")
    sentences = builtin_sentences()
    assert len(lines) == len(sentences) - 2
    assert lines[1] == " ".join(sentences[1:4])


@pytest.mark.skipif(gpu._cuda_available(), reason="a CUDA GPU is visible")
def test_gpu_check_says_clearly_that_it_needs_a_gpu(tmp_path):
    with pytest.raises(SystemExit, match="torch sees no CUDA GPU"):
        gpu.main(["--out", str(tmp_path)])


@pytest.mark.parametrize("name", ["2026-11-27-suite-full-cpu-2core.json", "2026-11-27-gpu-h100.json"])
def test_headline_table_of_committed_results(name):
    report = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / name).read_text())
    rows = headline.rows_of(report)
    table = headline.markdown(rows)
    assert table.startswith("| figure | qkscale | baseline (same run) | ratio |")
    assert len(table.splitlines()) == len(rows) + 2 and all(len(row) == 4 for row in rows)
    figures = " ".join(row[0] for row in rows)
    assert "extraction" in figures and "UMAP of one head" in figures


def test_scale_benchmark_fits_an_exponent_per_stage_and_plots(tmp_path):
    from benchmarks import scale

    out = tmp_path / "scale.json"
    stages = "extract,metrics,project pca"
    scale.main(["--sizes", "2000,4000", "--stages", stages, "--work", str(tmp_path / "work"), "--out", str(out)])
    section = json.loads(out.read_text())["sections"]["scale"]
    sizes = section["sizes"]
    assert set(sizes) == {"2000", "4000"}
    assert 1500 < sizes["2000"]["tokens"] <= 2000 < sizes["4000"]["tokens"] <= 4000
    for size in sizes.values():
        assert set(size["stages"]) == set(stages.split(","))
        assert all(s["seconds"] > 0 and s["peak_rss_mib"] > 50 for s in size["stages"].values())
    assert set(section["exponents"]) == set(stages.split(","))
    assert all(isinstance(e["seconds"], float) for e in section["exponents"].values())
    assert out.with_suffix(".png").stat().st_size > 1000
    rows = headline.rows_of(json.loads(out.read_text()))
    assert [row[0] for row in rows] == [f"{name}, {sizes['4000']['tokens']:,} tokens" for name in stages.split(",")]
    assert all("time ∝ N^" in row[2] for row in rows)


def test_exponent_of_a_power_law():
    from benchmarks.scale import exponent

    assert exponent([10, 100, 1000], [2.0, 20.0, 200.0]) == pytest.approx(1.0)
    assert exponent([10, 100], [5.0, 5.0]) == pytest.approx(0.0)
    assert exponent([10], [1.0]) is None


def test_load_benchmark_serves_every_session(dashboard_store, tmp_path):
    """Three concurrent client sessions, each: matrix, a head, three zooms, a click (no timing asserted)."""
    pytest.importorskip("bokeh.client")
    from benchmarks import load

    out = tmp_path / "load.json"
    load.main(["--store", str(dashboard_store.path), "--sessions", "3", "--timeout", "240", "--out", str(out)])
    section = json.loads(out.read_text())["sections"]["load"]
    assert section["errors"] == 0 and section["server_tracebacks"] == 0, section
    counts = {action: figure["n"] for action, figure in section["actions_s"].items()}
    assert counts == {"matrix": 3, "open_head": 3, "zoom": 9, "click": 3}
    assert section["server_peak_rss_mib"] > 0
    assert "3 concurrent sessions (all at once;" in headline.markdown(list(headline.load(section)))

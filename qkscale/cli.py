"""The `qkscale` command: a thin layer over the stages. User errors print one line and exit 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from qkscale.errors import QKScaleError, QKScaleWarning
from qkscale.project.run import DEFAULT_SAMPLE

app = typer.Typer(
    help="AttentionViz-style joint query-key embeddings at corpus scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
def extract(
    out: Annotated[Path, typer.Option("--out", help="Store folder to create (or resume).")],
    model: Annotated[str, typer.Option(help="'minilm' (packaged default) or a local model directory.")] = "minilm",
    corpus: Annotated[
        str,
        typer.Option(
            help="'builtin' or a .txt/.jsonl/.parquet file or folder; for vision models 'builtin-images' "
            "or a folder of PNG/JPEG images (default: builtin, or builtin-images for a vision model)."
        ),
    ] = "auto",
    max_length: Annotated[int, typer.Option(help="Tokens per document; longer ones are truncated.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Documents per forward pass.")] = 64,
    limit_docs: Annotated[int | None, typer.Option(help="Only the first N documents.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Only the first documents holding at most N tokens (instead of --limit-docs).")
    ] = None,
    layers: Annotated[str | None, typer.Option(help="Layers to store, e.g. 0,2-4 (default all).")] = None,
    docs_per_shard: Annotated[int, typer.Option(help="Documents per atomically committed shard.")] = 1024,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (float32 on CPU, float16 on CUDA), float16 or bfloat16.")] = "auto",
    q_module: Annotated[
        str | None, typer.Option(help="Generic adapter: query projection path with {layer}, e.g. layers.{layer}.q.")
    ] = None,
    k_module: Annotated[str | None, typer.Option(help="Generic adapter: key projection path with {layer}.")] = None,
    n_heads: Annotated[int | None, typer.Option(help="Generic adapter: heads per layer (default: config).")] = None,
    head_dim: Annotated[int | None, typer.Option(help="Generic adapter: head size (default: config).")] = None,
    causal: Annotated[bool, typer.Option("--causal", help="Generic adapter: the model masks later tokens.")] = False,
) -> None:
    """Extract every head's queries and keys over a corpus into a store (resumable)."""
    from qkscale.extraction import extract as run_extract
    from qkscale.inspect import format_summary, summarize

    store = run_extract(
        model,
        corpus,
        out,
        max_length=max_length,
        batch_size=batch_size,
        limit_docs=limit_docs,
        max_tokens=max_tokens,
        layers=layers,
        docs_per_shard=docs_per_shard,
        device=device,
        dtype=dtype,
        q_module=q_module,
        k_module=k_module,
        n_heads=n_heads,
        head_dim=head_dim,
        causal=causal,
    )
    typer.echo(format_summary(summarize(store)))


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(help="Store folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Summarize a store: model, heads, documents, tokens, size, complete or not."""
    from qkscale.inspect import format_summary, summarize
    from qkscale.store import open_store

    summary = summarize(open_store(store))
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@app.command()
def project(
    store: Annotated[Path, typer.Argument(help="Store folder (a complete extraction).")],
    method: Annotated[str, typer.Option(help="umap, tsne or pca.")] = "umap",
    dims: Annotated[int, typer.Option(help="2 or 3.")] = 2,
    backend: Annotated[
        str, typer.Option(help="auto (cuml, else torchdr on a GPU, else cpu), cuml, torchdr or cpu.")
    ] = "auto",
    layers: Annotated[str | None, typer.Option(help="Layers to project, e.g. 0,2-4 (default all stored).")] = None,
    heads: Annotated[str | None, typer.Option(help="Heads to project, e.g. 0-3 (default all).")] = None,
    sample: Annotated[int, typer.Option(help="Points fitted per head; the rest are placed by their neighbours.")] = (
        DEFAULT_SAMPLE
    ),
    metric: Annotated[str, typer.Option(help="cosine (as AttentionViz) or euclidean.")] = "cosine",
    seed: Annotated[int, typer.Option(help="Random seed (CPU results are reproducible).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Recompute heads that already have this projection.")] = False,
) -> None:
    """Jointly embed every selected head's queries and keys in 2D/3D (one file per head, resumable)."""
    from qkscale.project import plan_projection, run_plan

    plan = plan_projection(
        store,
        method=method,
        dims=dims,
        backend=backend,
        layers=layers,
        heads=heads,
        sample=sample,
        metric=metric,
        seed=seed,
        force=force,
    )
    if plan.done:
        typer.echo(
            f"{len(plan.done)} of {len(plan.heads)} heads already projected; skipping them (--force redoes them)"
        )
    records = run_plan(plan)
    if records:
        trust = sorted(r["trustworthiness"] for r in records)
        span = f"{trust[0]:.3f}" if len(trust) == 1 else f"{trust[0]:.3f}-{trust[-1]:.3f}"
        typer.echo(
            f"projected {len(records)} heads with {records[0]['library']} on {records[0]['device']}: "
            f"trustworthiness {span}, {sum(r['seconds'] for r in records):.1f} s"
        )


@app.command()
def metrics(
    store: Annotated[Path, typer.Argument(help="Store folder (a complete extraction).")],
    force: Annotated[bool, typer.Option("--force", help="Recompute metrics that already exist.")] = False,
    top: Annotated[int, typer.Option(help="Heads to list per statistic.")] = 3,
) -> None:
    """Per-head statistics (entropy, attended distance, sinks, neighbour masses, norms) and head similarity."""
    from qkscale.metrics import compute_metrics, format_metrics

    typer.echo(format_metrics(compute_metrics(store, force=force), top=top))


_SCHEDULER_HELP = "local (worker processes here), local-cuda (one worker per GPU) or a tcp://host:port scheduler."


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="Job spec (YAML), e.g. workflows/demo.yaml.")],
    scheduler: Annotated[str | None, typer.Option(help=_SCHEDULER_HELP + " Default: the spec's cluster.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Store folder (default: the spec's out).")] = None,
) -> None:
    """Run a job on a Dask cluster to the end: extract, metrics, projections (resumable)."""
    from qkscale.jobs import load_spec
    from qkscale.jobs import run as run_job

    summary = run_job(load_spec(spec), scheduler, out)
    typer.echo(summary.format())


@app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec (YAML).")],
    scheduler: Annotated[str, typer.Option(help="Address of a running Dask scheduler, tcp://host:port.")],
    out: Annotated[Path | None, typer.Option("--out", help="Store folder (default: the spec's out).")] = None,
) -> None:
    """Start a job inside a running Dask cluster and return at once; follow it with `qkscale status`."""
    from qkscale.jobs import load_spec
    from qkscale.jobs import submit as submit_job

    job_id, store = submit_job(load_spec(spec), scheduler, out)
    typer.echo(f"submitted job {job_id}; follow it with: qkscale status {store}")


@app.command()
def status(
    store: Annotated[Path, typer.Argument(help="Store folder of a job.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Where a job stands: state, shards done/total, heads projected, tokens/s, failures."""
    from qkscale.jobs import format_status, job_status

    answer = job_status(store)
    typer.echo(json.dumps(answer, indent=2) if as_json else format_status(answer))


@app.command()
def serve(
    store: Annotated[Path, typer.Argument(help="Store folder to explore.")],
    port: Annotated[int, typer.Option(help="TCP port.")] = 5006,
    address: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    allow_websocket_origin: Annotated[
        list[str] | None,
        typer.Option(help="HOST:PORT a browser may connect from (repeatable), e.g. behind an SSH tunnel or proxy."),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Open the dashboard in a browser.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log the time of every zoom's re-aggregation.")] = False,
) -> None:
    """Serve the dashboard (matrix, single-head, sentence, aggregate, image, metrics views) of a store."""
    from qkscale.dashboard.server import serve as serve_store

    serve_store(store, port, address, allow_websocket_origin, show, verbose)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """qkscale's own warnings as one line on stderr; every other warning as Python shows it."""
    if issubclass(category, QKScaleWarning):
        print(f"qkscale: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning
INTERRUPTED = 130


def main() -> None:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    with warnings.catch_warnings():  # restores the filters and showwarning afterwards (in-process callers)
        warnings.simplefilter("always", QKScaleWarning)
        warnings.showwarning = _print_warning
        try:
            code = app(standalone_mode=False)  # Click turns Ctrl-C into the return value 130
            if code == INTERRUPTED:
                raise KeyboardInterrupt
        except QKScaleError as exc:
            print(f"qkscale: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:  # disk full, permissions: the environment, not a bug in qkscale
            print(f"qkscale: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("qkscale: interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(INTERRUPTED)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        except Exception as exc:
            if not hasattr(exc, "format_message"):  # not a usage error: a bug, keep the traceback
                raise
            print(f"qkscale: error: {exc.format_message()} (see qkscale --help)", file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    main()

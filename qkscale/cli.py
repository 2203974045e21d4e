"""The `qkscale` command: a thin layer over the stages. User errors print one line and exit 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from qkscale.errors import QKScaleError, QKScaleWarning
from qkscale.options import cli_command
from qkscale.stage_options import ExtractOptions, ProjectOptions

app = typer.Typer(
    help="AttentionViz-style joint query-key embeddings at corpus scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
@cli_command(ExtractOptions)
def extract(
    out: Annotated[Path, typer.Option("--out", help="Store folder to create (or resume).")],
    options: ExtractOptions,
) -> None:
    """Extract every head's queries and keys over a corpus into a store (resumable)."""
    from dataclasses import asdict

    from qkscale.extraction import extract as run_extract
    from qkscale.inspect import format_summary, summarize

    store = run_extract(out=out, **asdict(options))
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
@cli_command(ProjectOptions)
def project(
    store: Annotated[Path, typer.Argument(help="Store folder (a complete extraction).")],
    options: ProjectOptions,
    force: Annotated[bool, typer.Option("--force", help="Recompute heads that already have this projection.")] = False,
) -> None:
    """Jointly embed every selected head's queries and keys in 2D/3D (one file per head, resumable)."""
    from dataclasses import asdict

    from qkscale.engine import run_stage
    from qkscale.project import plan_projection

    stage = plan_projection(store, force=force, **asdict(options))
    total, done = stage.work_total()
    if done:
        typer.echo(f"{done} of {total} heads already projected; skipping them (--force redoes them)")
    finished = run_stage(stage)
    if finished.summary:
        typer.echo(finished.summary)


@app.command()
def metrics(
    store: Annotated[Path, typer.Argument(help="Store folder (a complete extraction).")],
    force: Annotated[bool, typer.Option("--force", help="Recompute metrics that already exist.")] = False,
    top: Annotated[int, typer.Option(help="Heads to list per statistic.")] = 3,
) -> None:
    """Per-head statistics (entropy, attended distance, sinks, neighbour masses, norms) and head similarity."""
    from qkscale.metrics import compute_metrics, format_metrics

    typer.echo(format_metrics(compute_metrics(store, force=force), top=top))


@app.command()
def verify(
    store: Annotated[Path, typer.Argument(help="Store folder to check.")],
    repair: Annotated[
        bool, typer.Option("--repair", help="Set damaged parts aside and make them again (extract, project, metrics).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the problems as JSON.")] = False,
) -> None:
    """Check every shard, projection, map, thumbnail and metrics file and the manifest; exit 1 on any problem."""
    from qkscale.verify import repair_store, verify_store

    if not store.is_dir():
        raise typer.BadParameter(f"store {store} does not exist", param_hint="STORE")
    problems = verify_store(store, progress=not as_json)
    if problems and repair:
        out = sys.stderr if as_json else sys.stdout  # --json keeps stdout for the JSON

        def log(line: str) -> None:
            print(f"repair: {line}", file=out, flush=True)

        repair_store(store, problems, progress=not as_json, log=log)
        left = verify_store(store, progress=False)
    else:
        left = problems
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "store": str(store),
                    "problems": [p.as_dict() for p in problems],
                    "left": [p.as_dict() for p in left] if repair else None,
                },
                indent=2,
            )
        )
    else:
        for problem in left if repair else problems:
            typer.echo(problem.line())
        typer.echo(_verdict(problems, left, repair))
    if left:
        raise typer.Exit(1)


def _verdict(problems: list, left: list, repair: bool) -> str:
    if not problems:
        return "store is sound: no problems found"
    if repair and not left:
        return f"repaired {len(problems)} problem(s): the store is sound"
    return f"{len(left)} problem(s)" + ("" if repair else "; `qkscale verify --repair` repairs them")


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
    basic_auth: Annotated[
        str | None,
        typer.Option(help="Ask for a login: one PASSWORD for any user, or a JSON FILE of user -> password."),
    ] = None,
    cookie_secret: Annotated[
        str | None, typer.Option(help="Secret that signs login cookies (default: a random one per start).")
    ] = None,
    threads: Annotated[int, typer.Option(help="Threads running the sessions' callbacks.")] = 4,
) -> None:
    """Serve the dashboard (matrix, single-head, sentence, aggregate, image, metrics views) of a store."""
    from qkscale.dashboard.server import serve as serve_store

    serve_store(store, port, address, allow_websocket_origin, show, verbose, basic_auth, cookie_secret, threads)


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
            if isinstance(code, int) and code:
                sys.exit(code)  # a verb's typer.Exit(code), returned rather than raised
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

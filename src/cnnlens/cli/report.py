"""`cnnlens report RESULTS_DIR`: rebuild report.html from the results.json of an explain run."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    results_dir: Path = typer.Argument(
        ...,
        metavar="RESULTS_DIR",
        help="Folder written by `cnnlens explain` (holding results.json), or the file itself.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="HTML file to write [default: RESULTS_DIR/report.html]."
    ),
    title: str | None = typer.Option(None, "--title", help="Title of the report page."),
) -> None:
    """Rebuild the self-contained HTML report from RESULTS_DIR/results.json, or write the
    report of a Parquet store written by `cnnlens explain --format parquet`."""
    from cnnlens.cli import _dataset  # dataset store mode (cnnlens.dataset)
    from cnnlens.pipelines.outdir import check_writable_file
    from cnnlens.report.results import build_report

    if out is not None:  # checked before any work
        check_writable_file(out)
    if _dataset.is_store(results_dir):
        typer.echo(str(_dataset.report_store(results_dir, out, title)))
        return

    path = build_report(results_dir, out, title=title)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the `report` command to the cnnlens command line."""
    app.command("report")(report)

"""Entry point of the `cnnlens` command.

Each sub-command lives in its own module of this package and exposes ``register(app)``.
User errors (:class:`cnnlens.errors.CnnlensError`) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from cnnlens.errors import CnnlensError

# The one list of sub-command modules (cnnlens/cli/<name>.py, each with register(app)).
COMMANDS: tuple[str, ...] = (
    "assess",
    "demo",
    "explain",
    "prototype",
    "report",
    "serve",
    "summary",
    "train",
)

app = typer.Typer(
    name="cnnlens",
    help="Make the decisions of convolutional neural networks visible and checkable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("cnnlens")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            found = "unknown"
        import torch

        print(f"cnnlens {found} (torch {torch.__version__}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in COMMANDS:
    importlib.import_module(f"cnnlens.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for user errors)."""
    from cnnlens.cli._help import tidy

    args = sys.argv[1:] if argv is None else argv
    command = tidy(typer.main.get_command(app), choices="--help" in args or not args)
    try:
        status = command(args=argv, standalone_mode=False)
    except CnnlensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except typer.Exit as err:
        return int(err.exit_code or 0)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as err:
        # usage errors of the command-line parser (click's, whether bundled in typer or not)
        if hasattr(err, "show") and hasattr(err, "exit_code"):
            err.show()
            return int(err.exit_code or 2)
        raise
    return status if isinstance(status, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

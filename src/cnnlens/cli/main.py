"""Entry point of the `cnnlens` command.

Each sub-command lives in its own module of this package and exposes ``register(app)``.
User errors (:class:`cnnlens.errors.CnnlensError`) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click
import typer

from cnnlens.errors import CnnlensError

# The one list of sub-command modules (cnnlens/cli/<name>.py, each with register(app)).
COMMANDS: tuple[str, ...] = ("report",)

app = typer.Typer(
    name="cnnlens",
    help="Make the decisions of convolutional neural networks visible and checkable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


for _name in COMMANDS:
    importlib.import_module(f"cnnlens.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for user errors)."""
    try:
        app(args=argv, standalone_mode=False)
    except CnnlensError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except click.ClickException as err:
        err.show()
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

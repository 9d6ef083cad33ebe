"""`cnnlens serve --model M [--images DIR] [--port N]`: the local web explorer."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    model: str = typer.Option(..., "--model", "-m", help="Model name or checkpoint file."),
    weights: str | None = typer.Option(
        None, "--weights", help="Weights for a model name: a file, or a torchvision name."
    ),
    images: Path | None = typer.Option(None, "--images", help="Folder of images to offer."),
    port: int = typer.Option(8765, "--port", help="Port on 127.0.0.1 (0: any free port)."),
    out: Path = typer.Option(
        Path("cnnlens-explorer"), "--out", "-o", help="Folder for reports written from the page."
    ),
    workers: int = typer.Option(1, "--workers", help="Explanations that may run at once."),
) -> None:
    """Explore explanations in the browser: pick or upload an image, a method, a layer."""
    from cnnlens.serve import Explorer, make_server

    explorer = Explorer(model, weights=weights, images=images, out_dir=out, max_workers=workers)
    server = make_server(explorer, port)
    typer.echo(f"cnnlens explorer on http://127.0.0.1:{server.server_port}/ (Ctrl+C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the cnnlens command line."""
    app.command("serve")(serve)

"""`vgg-mobile demo` and `serve`: the static web demo."""

from __future__ import annotations

from pathlib import Path

import click




@click.command("demo")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", "bundle", required=True, type=click.Path(path_type=Path),
              help="Export folder from `vgg-mobile convert` (or its tfjs/ bundle).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def demo_cmd(out, bundle, force):
    """Assemble a static in-browser demo folder OUT: page, vendored TensorFlow.js, model."""
    from vgg_mobile.site import assemble_demo

    assemble_demo(out, bundle, force=force)
    click.echo(f"wrote {out}; open it with: vgg-mobile serve {out}")


@click.command("serve")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, help="0 picks a free port.")
def serve_cmd(directory, host, port):
    """Serve a demo folder (only its files), cross-origin isolated for the WASM backend."""
    from vgg_mobile.site import make_server

    server = make_server(directory, host, port)
    bound_host, bound_port = server.server_address[:2]
    click.echo(f"serving {directory} at http://{bound_host}:{bound_port}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()


# --- pipeline command ---

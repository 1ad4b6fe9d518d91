"""`vgg-mobile web-demo` and `serve`: the static web demo."""

from __future__ import annotations

from pathlib import Path

import click

from vgg_mobile.cli.common import default, invocation, log
from vgg_mobile.web_demo import make_server


@click.command("web-demo")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", "bundle", required=True, type=click.Path(path_type=Path),
              help="Export folder from `vgg-mobile convert` (or its tfjs/ bundle).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def web_demo_cmd(out, bundle, force):
    """Assemble a static in-browser demo folder OUT: page, vendored TensorFlow.js, model."""
    from vgg_mobile.web_demo import assemble_demo

    assemble_demo(out, bundle, force=force)
    click.echo(f"wrote {out}; open it with: {invocation()} serve {out}")


def _old_name(name: str, command: click.Command) -> click.Command:
    """`command` under the name it had before, hidden from --help: scripts still call it."""

    def callback(**params):
        log(f"note: vgg-mobile {name} is now vgg-mobile {command.name}")
        return command.callback(**params)

    return click.Command(name, params=command.params, callback=callback, help=command.help,
                         hidden=True)


demo_cmd = _old_name("demo", web_demo_cmd)


@click.command("serve")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--host", default=default(make_server, "host"), show_default=True,
              help="Address to bind; anything but 127.0.0.1, ::1 or localhost lets other "
                   "machines fetch the folder's files.")
@click.option("--port", default=default(make_server, "port"), show_default=True,
              type=click.IntRange(0, 65535),
              help="0 picks a free port.")
def serve_cmd(directory, host, port):
    """Serve a demo folder (only its files), cross-origin isolated for the WASM backend."""
    from vgg_mobile.web_demo import exposure_warning

    server = make_server(directory, host, port)
    bound_host, bound_port = server.server_address[:2]
    warning = exposure_warning(host, bound_port, directory)
    if warning:
        log(warning)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(f"serving {directory} at http://{shown}:{bound_port}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()

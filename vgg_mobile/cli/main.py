"""The `vgg-mobile` command line: the only module that parses flags and talks to the terminal.

Exit codes: 0 success; 1 internal or environment error (e.g. disk full); 2 bad input (usage,
data, run directory, option values); 3 a size or accuracy budget was missed; 4 the output
folder is in use by another vgg-mobile process; 130 interrupted.
Progress goes to stderr, results to stdout (`--json` prints only JSON there).
"""

from __future__ import annotations

import errno
import json
import shlex
import sys
import traceback

import click


from vgg_mobile.cli import (compress, convert, data, distill, explain, pipeline, serve, train,
                            web_demo)
from vgg_mobile.cli.common import invocation, log
from vgg_mobile.core import quiet
from vgg_mobile.core.processes import follow_parent
from vgg_mobile.core.version import __version__
from vgg_mobile.core.errors import VggMobileError

EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_BUDGET, EXIT_INTERRUPTED = 1, 2, 3, 130
# The group's own flags, accepted after the subcommand too (`convert ... --debug`), where
# users type them.
GLOBAL_FLAGS = ("--debug", "--verbose")


class _Group(click.Group):
    """Turns the library's exceptions into one-line messages and exit codes."""

    def parse_args(self, ctx, args):
        # Everything before a `--` that ends the options; the flags move to the group.
        end = args.index("--") if "--" in args else len(args)
        flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        ctx.meta["arguments"] = rest
        return super().parse_args(ctx, flags + rest)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VggMobileError as err:
            log(f"error: {err}")
            report = getattr(err, "report", None)
            if report is not None and ctx.meta.get("json"):
                # A CI job reads the figures exactly when a budget is missed.
                click.echo(json.dumps(report, indent=2))
            sys.exit(err.exit_code)
        except KeyboardInterrupt as err:
            # An output that had nothing to resume from says so (`core.outputs.claim_output`).
            hint = (getattr(err, "__notes__", None) or [ctx.meta.get("resume_hint")])[-1]
            log("interrupted" + (f"; {hint}" if hint else ""))
            sys.exit(EXIT_INTERRUPTED)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                log(f"error: no space left on the device while writing {err.filename or 'output'}; "
                     "finished files were kept, the unfinished one was discarded")
            else:
                log(f"error: {err.filename or ''}: {err.strerror or err}")
            if ctx.meta.get("debug"):
                traceback.print_exc()
            sys.exit(EXIT_INTERNAL)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - the last line of defence for a CLI
            log(f"internal error: {type(err).__name__}: {err}")
            if ctx.meta.get("debug"):
                traceback.print_exc()
            else:
                args = " ".join(shlex.quote(a) for a in ctx.meta.get("arguments", []))
                log(f"(for the traceback, run: {invocation()} --debug {args})")
            sys.exit(EXIT_INTERNAL)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vgg-mobile")
@click.option("--debug", is_flag=True,
              help="Print tracebacks of internal errors, and TensorFlow's own log lines.")
@click.option("--verbose", is_flag=True,
              help="Print TensorFlow's own log lines (silenced by default).")
@click.pass_context
def main(ctx, debug, verbose):
    """Fine-tune VGG16 on a folder of labelled images and ship it to phones and browsers.

    Every command reads a data folder or a run directory and writes a new run directory
    (model, labels.txt, manifest.json).
    """
    ctx.meta["debug"] = debug
    follow_parent()
    if debug or verbose:
        quiet.configure(verbose=True)


for command in (data.sample_data_cmd, train.doctor_cmd, train.train_cmd, train.evaluate_cmd,
                explain.explain_cmd,
                convert.convert_cmd, convert.inspect_cmd, compress.prune_cmd, compress.qat_cmd,
                distill.distill_cmd, web_demo.web_demo_cmd, web_demo.demo_cmd, web_demo.serve_cmd,
                serve.serve_model_cmd, serve.serve_admin_cmd, serve.monitoring_cmd,
                pipeline.pipeline_cmd, pipeline.benchmark_cmd):
    main.add_command(command)

"""The `optkit` command line: the group, the entry point, and the error wrapping around both.

One module per command family (`fuse`, `verify`, `bench`, `activations`, `preprocess`, `training`),
`common` for the options, parsers and output guards they share, `render` for text and JSON. Command
modules import the library and `common` / `render`, never each other. Library code never prints;
the CLI does.

Exit codes: 0 success, 1 verification found a difference, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import click

from optkit.errors import OptkitError

INTERNAL_ERROR = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="optkit")
@click.option("-v", "--verbose", is_flag=True, help="Log what passes do (to stderr).")
def cli(verbose: bool) -> None:
    """optkit: verified ONNX graph rewrites.

    \b
    Start here:
      optkit demo                  build a small CNN, fuse it, verify it, print the report
      optkit fuse model.onnx       fold BatchNorm and clean up -> model.optkit.onnx
      optkit passes                what each pass does and how exact it is
      optkit inspect model.onnx    what is in a model, and what fuse would do to it
      optkit verify a.onnx b.onnx  do two models compute the same thing? (--bisect: where not)
      optkit bench b.onnx --baseline a.onnx   latency and throughput, as a ratio
      optkit activations model.onnx          which activations, where, which decomposed
      optkit swap model.onnx --map Gelu=Gelu:tanh   swap activations, with error bounds
      optkit train / finetune / export / stats       the PyTorch side (needs optkit[torch])

    Every rewrite is checked on ONNX Runtime (graph optimizations off) against the original.
    Exit codes: 0 ok, 1 outputs differ, 2 bad input or usage, 3 internal error.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="optkit: %(levelname)s: %(message)s",
    )
    # onnx_ir warns about malformed input while optkit is still deciding how to report it (one
    # line, see `main`); its notes about optkit's own rewrites are not the user's concern.
    logging.getLogger("onnx_ir").setLevel(logging.INFO if verbose else logging.ERROR)


def _register_subcommands() -> None:
    from optkit.cli.activations import activations_command, swap_command
    from optkit.cli.bench import bench_command
    from optkit.cli.fuse import demo_command, fuse_command, inspect_command, passes_command
    from optkit.cli.preprocess import preprocess_group
    from optkit.cli.training import export_command, finetune_command, stats_command, train_command
    from optkit.cli.verify import verify_command

    for command in (
        fuse_command, verify_command, bench_command, inspect_command, demo_command,
        passes_command, preprocess_group, swap_command, activations_command,
        train_command, finetune_command, export_command, stats_command,
    ):  # fmt: skip
        cli.add_command(command)


_register_subcommands()


def main() -> None:
    """Entry point: one clear line and a non-zero exit code for every failure, never a traceback,
    and no Python warnings on the user's terminal (OPTKIT_DEBUG=1 shows both)."""
    if not os.environ.get("OPTKIT_DEBUG"):
        warnings.simplefilter("ignore")
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("optkit: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `optkit` or a group alone: its help
        click.echo(exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:  # one line, like every other error, with where to look
        command = exc.ctx.command_path if exc.ctx is not None else "optkit"
        click.echo(
            f"optkit: error: {exc.format_message()} (see '{command} --help')".replace("\n", " "),
            err=True,
        )
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"optkit: error: {exc.format_message()}".replace("\n", " "), err=True)
        sys.exit(2)
    except OptkitError as exc:
        click.echo(f"optkit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system refused (permissions, a full disk): not an optkit bug
        if os.environ.get("OPTKIT_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"optkit: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        if os.environ.get("OPTKIT_DEBUG"):
            raise
        click.echo(
            f"optkit: internal error: {type(exc).__name__}: {exc} (set OPTKIT_DEBUG=1 for a "
            "traceback, and please report it)",
            err=True,
        )
        sys.exit(INTERNAL_ERROR)
    sys.exit(0)


__all__ = ["cli", "main"]

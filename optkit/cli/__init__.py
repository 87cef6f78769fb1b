"""The `optkit` command line: the group, the entry point, and the error wrapping around both.

One module per command family (`fuse`, `verify`, `bench`, `activations`, `preprocess`, `training`,
`ensemble`),
`common` for the options, parsers and output guards they share, `render` for text and JSON. Command
modules import the library and `common` / `render`, never each other. Library code never prints;
the CLI does.

Start-up: a command's module is imported when that command is named (or listed by `--help`), and
command modules import only click and optkit's light modules at the top; onnx, onnx_ir, numpy,
onnxruntime and torch are imported inside the commands that use them, so `optkit --help` and a
usage error answer in a tenth of a second (tests/test_startup.py, tools/bench_startup.py).

Exit codes: 0 success, 1 verification found a difference, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import Any

import click

from optkit.errors import OptkitError

INTERNAL_ERROR = 3

# Each subcommand: the module that defines it and its name there, imported when first used.
SUBCOMMANDS = {
    "fuse": "optkit.cli.fuse:fuse_command",
    "verify": "optkit.cli.verify:verify_command",
    "bench": "optkit.cli.bench:bench_command",
    "inspect": "optkit.cli.fuse:inspect_command",
    "demo": "optkit.cli.fuse:demo_command",
    "passes": "optkit.cli.fuse:passes_command",
    "preprocess": "optkit.cli.preprocess:preprocess_group",
    "swap": "optkit.cli.activations:swap_command",
    "activations": "optkit.cli.activations:activations_command",
    "train": "optkit.cli.training:train_command",
    "finetune": "optkit.cli.training:finetune_command",
    "export": "optkit.cli.training:export_command",
    "stats": "optkit.cli.training:stats_command",
    "ensemble": "optkit.cli.ensemble:ensemble_command",
    "tta": "optkit.cli.ensemble:tta_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when first named (click's documented pattern):
    `optkit fuse` never imports the PyTorch side's module, and `--help` imports only the command
    modules, which keep their heavy imports inside the commands."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_subcommands:
            module_name, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy_subcommands[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in self.lazy_subcommands:
            for name in self.lazy_subcommands:  # a name of none: click's "Did you mean" sees all
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


@click.group(
    cls=LazyGroup,
    lazy_subcommands=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
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
      optkit ensemble a.onnx b.onnx -o ab.onnx       several models as one, verified
      optkit tta model.onnx --shift 1                test-time augmentation in one pass
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

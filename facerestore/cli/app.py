"""The `facerestore` command: restoring photos is the default command, next to subcommands.

Commands are thin: they parse options, call one library function, and turn `FaceRestoreError` into
one line on stderr with exit code 1 (2 for usage errors); tracebacks only with --debug. Under
torchrun the line comes from rank 0 alone; every rank exits with the code.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from pathlib import Path
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn, Optional

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from facerestore import __version__
from facerestore.cli.entry import INTERRUPTED_EARLY
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.ranks import main_rank

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
CONTEXT = {"help_option_names": ["-h", "--help"]}
PRECISION_HELP = ("Networks' precision: auto (bf16/fp16 on CUDA for the diffusion methods, fp32 elsewhere), fp32, "
                  "bf16 (on the CPU: faster where it has AMX or AVX512-BF16, slower elsewhere), fp16 (CUDA).")


COMMAND_PATH = "facerestore.command_path"  # ctx.meta key: the command being parsed, for usage errors without a context


class CommandGroup(TyperGroup):
    """Remembers which command it handed the arguments to: click raises some usage errors (an option
    missing its value) with no context, and their hint should name that command's help, not the root's."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta[COMMAND_PATH] = f"{ctx.command_path} {name}"  # meta is shared by every nested context
        return name, command, rest


class DefaultCommandGroup(CommandGroup):
    """`facerestore photo.jpg` means `facerestore restore photo.jpg`."""

    default_command = "restore"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _refuse_empty_arguments(args, _flags_of(self))
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            _refuse_mistyped_command(args[0], list(self.commands))
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        with one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context):
        """Each long command says what Ctrl-C kept while it works; before that (its imports, torch's
        take seconds, and its option checks) typer would exit 130 without a word."""
        try:
            with one_line_usage_errors(ctx):  # a sub-command's options are parsed in here
                return super().invoke(ctx)
        except KeyboardInterrupt:
            say_interrupted_early()
            raise typer.Exit(130) from None


try:  # typer 0.29 and later carry their own click, whose errors are these classes
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the click package
    from click import exceptions as click_errors


class OneLineUsageError(click_errors.UsageError):
    """click's usage error as the one `error:` line every other refusal is (click prints the usage,
    a blank line and "Error: ..." on four lines); exit 2 as before."""

    def __init__(self, message: str, hint: str, ctx: click.Context | None = None) -> None:
        super().__init__(message, ctx)
        self.hint = hint

    def show(self, file=None) -> None:
        if main_rank():
            err.print(f"error: {self.message}; {self.hint}", markup=False)


@contextmanager
def one_line_usage_errors(ctx: click.Context | None = None) -> Iterator[None]:
    try:
        yield
    except (click_errors.NoArgsIsHelpError, OneLineUsageError):  # a command given nothing prints its help, as asked for
        raise
    except click_errors.UsageError as exc:
        raise _one_line(exc, ctx.meta.get(COMMAND_PATH, "facerestore") if ctx is not None else "facerestore") from None


def _one_line(exc: click_errors.UsageError, parsing: str = "facerestore") -> OneLineUsageError:
    """The message without click's trailing full stop; the hint: a close option name where there is
    one (click's own "Possible options" lists any name that shares a few letters, --out for --bogus),
    else the help of the command whose arguments were being parsed (`parsing`, when click gives the
    error no context)."""
    command = exc.ctx.command_path if exc.ctx is not None else parsing
    message = exc.format_message().strip().rstrip(".")
    hint = f"see `{command} -h`"
    if isinstance(exc, click_errors.NoSuchOption):
        message = f"no such option: {exc.option_name}"
        close = difflib.get_close_matches(exc.option_name, list(exc.possibilities or ()), n=1, cutoff=0.75)
        if close:
            hint = f"did you mean {close[0]}? (`{command} -h` lists the options)"
    lowered = message[:1].lower() + message[1:] if message[1:2].islower() else message  # "No such ..." but not "PHOTO ..."
    return OneLineUsageError(lowered, hint, exc.ctx)


EMPTY_ALLOWED = ("--suffix",)  # an empty suffix is no suffix, as if none were given


def _flags_of(command: click.Command) -> frozenset[str]:
    """The option names, in every command, that take no value: an empty word after one of them is
    an argument of its own, not that option's value."""
    flags = {name for param in command.params if getattr(param, "is_flag", False) or getattr(param, "count", False)
             for name in (*param.opts, *param.secondary_opts)}  # typer's vendored click: not click.Option
    for sub in getattr(command, "commands", {}).values():
        flags |= _flags_of(sub)
    return frozenset(flags)


def _refuse_empty_arguments(args: list[str], flags: Collection[str] = ()) -> None:
    """An empty argument is a path of "." to every option that takes one, so `facerestore "$DIR" -o out`
    with DIR unset restored the whole current folder (and `-o ""` wrote into it)."""
    for i, arg in enumerate(args):
        option, _, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        if value:
            continue
        before = args[i - 1] if i else ""
        option = option or (before if before.startswith("-") and before != "--" and before not in flags else "")
        if option in EMPTY_ALLOWED:
            continue
        where = f"for {option}" if "=" in arg else f"after {option}" if option else "as an argument"
        raise UsageError(f"an empty value was given {where} (an unset shell variable?)", hint="pass a path or value, or leave it out")


def _refuse_mistyped_command(word: str, commands: list[str]) -> None:
    """`facerestore restre x.jpg` would otherwise restore a photo named 'restre' and say it does not
    exist: a word close to a command name that is no file is taken for a typo of the command."""
    if word.startswith("-") or Path(word).suffix or Path(word).exists():
        return
    close = difflib.get_close_matches(word, commands, n=1, cutoff=0.75)
    if close:
        raise UsageError(f"{word!r} is neither a command nor a file",
                         hint=f"did you mean `facerestore {close[0]}`? (`facerestore --help` lists the commands)")


app = typer.Typer(
    cls=DefaultCommandGroup,
    help="Blind face restoration: detect, align, restore and paste back every face in a photo.\n\n"
    "Run `facerestore PHOTO_OR_FOLDER...` (the `restore` command) or one of the commands below.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def say_interrupted_early() -> None:
    """Ctrl-C before a command began its work: one line (the caller exits 130), as during the work."""
    if main_rank():
        err.print(INTERRUPTED_EARLY, markup=False)


def fail(error: FaceRestoreError, debug: bool = False) -> NoReturn:
    """One line on stderr (from the main torchrun rank only); exit 2 for usage errors and 1 otherwise, on every rank."""
    if debug:
        err.print_exception()
    if main_rank():
        err.print(f"error: {error.one_line()}", markup=False)
    else:
        let_the_main_rank_speak()
    raise typer.Exit(error.exit_code)


MAIN_RANK_GRACE_S = 3.0


def let_the_main_rank_speak() -> None:
    """Under torchrun, a rank other than 0 that stops waits a moment before it exits. torchrun stops
    every process with SIGTERM as soon as one exits, and the ranks meet the same refusal (a --batch-size
    the processes cannot split) at about the same time: a rank 1 that left first could stop rank 0,
    the one that prints the line, before it printed it (seen in CI: no error line at all)."""
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        time.sleep(MAIN_RANK_GRACE_S)


def write_failed(exc: OSError, then: str) -> FaceRestoreError:
    """A full disk or a lost mount while a long command writes its state: one line naming the file and
    how to go on (`then`), instead of a traceback."""
    where = f" {exc.filename}" if exc.filename else ""
    return FaceRestoreError(f"cannot write{where} ({exc.strerror or exc})", hint=f"free some space (or fix the folder), then {then}")


def _version(value: bool) -> None:
    if value:
        out.print(f"facerestore {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """Blind face restoration: detect, align, restore and paste back every face in a photo."""


def register() -> None:
    """Attach every command (imported here so `--help` stays fast: heavy imports happen inside commands)."""
    from facerestore.cli import clean_dataset, degrade, evaluate, finetune, methods, restore, train, weights  # noqa: F401


def main() -> None:
    # OpenCV logs its own warning for every corrupt file ("PNG input buffer is incomplete") before
    # the one-line error facerestore prints for it; set before any command imports cv2.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        register()
    except KeyboardInterrupt:
        say_interrupted_early()
        sys.exit(130)
    try:
        app(prog_name="facerestore")  # the command's name in its usage lines, also under `python -m facerestore`
    except KeyboardInterrupt:  # while typer builds the command line (annotations, click objects), before click's own handler
        say_interrupted_early()
        sys.exit(130)
    except FaceRestoreError as exc:  # a command that forgot to catch: still one line
        if main_rank():
            err.print(f"error: {exc.one_line()}", markup=False)
        else:
            let_the_main_rank_speak()
        sys.exit(exc.exit_code)

"""The `swarm` command: parse flags, call the library, map outcomes to exit codes.

The group and ``main`` live here; the commands in ``*_commands.py``, the options they share
in ``options.py`` and ``context.py``, how a run's manager runs in ``manager.py``, how an error
is shown in ``failures.py``.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import click

from worktree_swarm.cli import (
    clean_commands,
    merge_commands,
    plan_commands,
    run_commands,
    status_commands,
    streams,
)
from worktree_swarm.cli.failures import one_line, swarm_error, unexpected
from worktree_swarm.core.errors import BadInputError, ExitCode, SwarmError
from worktree_swarm.core.text import is_utf8, without_escapes
from worktree_swarm.infra import interrupts

# Each command imports what only it needs when it runs (the runner, the manifest reader,
# rich's live table, ...): this module imports in ~140 ms instead of ~330, which `swarm status`
# and the other quick commands feel, and so do the hundreds of `swarm` processes of the tests.


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    help="Run as if started in this directory.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="worktree-swarm")
@click.pass_context
def cli(ctx: click.Context, directory: Path, debug: bool) -> None:
    """Run coding agents in parallel, each in its own git worktree and branch."""
    if ctx.invoked_subcommand is None:
        commands = ", ".join(cli.list_commands(ctx))
        raise BadInputError(f"no command given; one of: {commands} (`swarm --help` says more)")
    if directory != Path():  # as git's -C: relative paths (a manifest, --html) are read from it
        try:
            os.chdir(directory)
        except OSError as exc:
            raise BadInputError(f"-C {str(directory)!r}: {exc.strerror or exc}") from None
    try:
        Path.cwd()
    except OSError as exc:  # deleted under the shell that started swarm
        raise BadInputError(
            f"the current directory is gone ({exc.strerror or exc}); cd into your repository "
            "again, or pass -C DIR"
        ) from None
    ctx.ensure_object(dict)
    ctx.obj.update({"dir": Path(), "debug": debug})


for _each in (
    run_commands.run,
    status_commands.runs_cmd,
    run_commands.retry_cmd,
    run_commands.resume_cmd,
    status_commands.status_cmd,
    status_commands.logs,
    run_commands.stop,
    status_commands.watch_cmd,
    run_commands.demo_cmd,
    merge_commands.diff_cmd,
    merge_commands.merge_cmd,
    merge_commands.pr_cmd,
    clean_commands.clean_cmd,
    clean_commands.doctor_cmd,
    status_commands.report_cmd,
    plan_commands.plan_cmd,
    plan_commands.note_cmd,
    plan_commands.notes_cmd,
):
    cli.add_command(_each)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM, and SIGHUP (the terminal closed), interrupt the command as Ctrl-C does.

    A SIGHUP that is ignored (``nohup``) stays ignored. After a hangup what is still said on
    the terminal goes nowhere: writing there fails, and would cut the stop short. While a run
    loop goes on, each (Ctrl-C too) is raised at its next look (:mod:`.interrupts`).
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            streams.note_hang_up()
            _away_from_terminal()
        interrupts.on_signal()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only (a command called from a thread)
        return
    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        caught.append(signal.SIGHUP)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C, not ignored
        caught.append(signal.SIGINT)
    previous = {signum: signal.signal(signum, handler) for signum in caught}
    try:
        yield
    finally:
        for signum, action in previous.items():
            signal.signal(signum, action)


def _away_from_terminal() -> None:
    """Point stdout and stderr, where they are a terminal, at /dev/null.

    Told by the kind of file (a character device), not by asking the terminal, which may
    not answer once hung up.
    """
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                if stat.S_ISCHR(os.fstat(fd).st_mode):
                    os.dup2(null, fd)
    finally:
        os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (docs/cli.md) instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if sys.flags.optimize >= 2:  # noqa: PLR2004 - `python -OO`, PYTHONOPTIMIZE=2
        _help_from_source()
    debug = _debug(args)
    streams.closed_output_to_null()
    streams.gone_reader_to_null()
    streams.output_takes_any_text()
    if undecodable := next((a for a in args if not is_utf8(a)), None):
        # Prompts, ids and commands go to agents, git, the store: all of them take UTF-8. Said
        # by where it is, not what it holds (a key in it, cut, would not be redacted).
        raw = os.fsencode(undecodable)
        at = _bad_at(raw)
        click.echo(
            f"swarm: argument {args.index(undecodable) + 1} is not valid UTF-8 (byte "
            f"{raw[at]:#04x} at offset {at}); pass text",
            err=True,
        )
        return ExitCode.BAD_INPUT
    # SIGTERM stops every command as Ctrl-C does (exit 130), not `swarm watch`: its screen
    # handles its own keys and signals.
    command = _command(args)
    interruptible = contextlib.nullcontext() if command == "watch" else _sigterm_as_interrupt()
    try:
        with interruptible:
            code = cli.main(args=args, prog_name="swarm", standalone_mode=False, obj={"argv": args})
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:  # it may quote what you typed: a key too
        click.echo(f"swarm: {one_line(without_escapes(exc.format_message()))}", err=True)
        return ExitCode.BAD_INPUT
    except click.exceptions.Abort:  # click's word for Ctrl-C (and SIGTERM, SIGHUP) in a command
        click.echo("swarm: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:  # outside click's own handling: before or after the command
        click.echo("swarm: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except SwarmError as exc:
        return swarm_error(exc, command, debug=debug)
    except Exception as exc:  # noqa: BLE001 - a bug's traceback, redacted: never Python's raw one
        return unexpected(exc, command, debug=debug)
    return int(code or 0)


def _help_from_source() -> None:
    """Give the commands their help back where ``-OO`` stripped it (click reads docstrings)."""
    try:  # the group's source is here, the commands' in the modules beside it
        trees = [
            ast.parse(source.read_text(encoding="utf-8"))
            for source in sorted(Path(__file__).parent.glob("*.py"))
        ]
    except (OSError, SyntaxError, ValueError):
        return  # no source beside the bytecode: the help stays without its text
    docs = {
        node.name: ast.get_docstring(node)
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
    }
    for command in (cli, *cli.commands.values()):
        if command.help is None and command.callback is not None:
            command.help = docs.get(command.callback.__name__)


def _bad_at(raw: bytes) -> int:
    """Where the first byte that is not UTF-8 is in *raw* (0 when it all is)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return 0


def _debug(args: Sequence[str]) -> bool:
    """Whether ``--debug`` is among the options before the command (a value after it is not)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "--debug":
            return True
        i += 2 if args[i] == "-C" else 1
    return False


def _command(args: Sequence[str]) -> str | None:
    """The command *args* run (``merge``), after the options before it; None without one."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] == "-C" else 1
    return args[i] if i < len(args) else None

"""The SwarmError hierarchy and the process exit codes."""

from __future__ import annotations

import enum
import shlex


class ExitCode(enum.IntEnum):
    """Process exit codes: 0 ok, 1 a task failed, 2 bad input, 3 repo busy, 130 interrupted."""

    OK = 0
    TASK_FAILED = 1
    BAD_INPUT = 2
    LOCKED = 3
    INTERRUPTED = 130


class SwarmError(Exception):
    """An expected failure; the message names what is at fault and what to do next."""

    exit_code: ExitCode = ExitCode.TASK_FAILED


class BadInputError(SwarmError):
    """Invalid manifest, flag, id, repository state: nothing was created."""

    exit_code = ExitCode.BAD_INPUT


def unknown_task(task_id: str, run_id: str) -> BadInputError:
    """The refusal of a task id run *run_id* does not have, naming what lists its tasks."""
    return BadInputError(
        f"no task {task_id!r} in run {run_id}; `swarm status --run {run_id}` lists them"
    )


class RunInterruptedError(SwarmError):
    """The run cannot go on for now (its Ray cluster is lost); `swarm resume` carries it on."""

    exit_code = ExitCode.INTERRUPTED


class ManagerLockedError(SwarmError):
    """Another manager holds this repository."""

    exit_code = ExitCode.LOCKED


class GitError(SwarmError):
    """A git operation failed in a way the user must act on."""


class GitStartError(GitError):
    """git could not start: the system refused a process (``ulimit -u``, open files, memory)."""


class CommandError(SwarmError):
    """A subprocess exited non-zero; carries argv, exit code and captured output."""

    def __init__(self, argv: list[str], returncode: int, output: str, full: bool = False) -> None:
        self.argv = argv
        self.returncode = returncode
        self.output = output
        self.full = full  # it failed to write where the disk is full (though it may not say so)
        tail = output.strip().splitlines()[-5:]
        detail = (": " + " | ".join(tail)) if tail else ""
        super().__init__(f"`{shlex.join(argv[:4])}` exited {returncode}{detail}")

    def __reduce__(self) -> tuple[type[CommandError], tuple[list[str], int, str, bool]]:
        # Pickled whole (a Ray node's git failing): the default would call __init__(message).
        return type(self), (self.argv, self.returncode, self.output, self.full)

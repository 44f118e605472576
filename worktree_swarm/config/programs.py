"""Up-front checks of what a task's `setup`, `checks` and `link` need from this machine.

A typo in a check's program or a `link` to a directory that is not there would otherwise show
only after every agent ran: the whole batch failed in the morning for one word.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.task import Task

if TYPE_CHECKING:
    from collections.abc import Callable


def check_task(task: Task, *, where: Callable[[str, str], str], repo_root: Path) -> None:
    """Raise BadInputError for a program of *task*'s commands or a `link` source that is missing.

    *where* names the place that set a key of the task (``where("checks", "checks[0]")``: its
    own table, a `[defaults]`, the config file, a flag), for the error to point at the line to
    fix.

    A program is looked for as the task will run it (the task's own `PATH` when its `env` sets
    one), unless a `setup` step before the command could install it: then it is not asked for
    yet. Programs named by a relative path are the worktree's (or a step's) and not looked for.
    """
    path = dict(task.env).get("PATH", os.environ.get("PATH", os.defpath))
    if task.setup:
        check_program(task.setup[0][0], path, where=where("setup", "setup[0]"))
    else:
        for i, argv in enumerate(task.checks):
            check_program(argv[0], path, where=where("checks", f"checks[{i}]"))
    root = repo_root.absolute()
    for name in task.link:
        if not (root / name).is_dir():
            raise BadInputError(
                f"{where('link', f'link {name!r}')}: {root / name} is missing or not a "
                "directory; create it in your checkout (install the dependencies there) or remove "
                "it from `link`"
            )


def check_program(program: str, path: str, *, where: str, setup: bool = True) -> None:
    """Raise BadInputError if *program* is known now not to run: not on *path*, not executable.

    *setup*: say that a `setup` step could install it (a task's command; not a merge's).
    """
    if Path(program).is_absolute():
        if not (Path(program).is_file() and os.access(program, os.X_OK)):
            raise BadInputError(f"{where}: program {program!r} is missing or not executable")
        return
    if "/" in program or any(not Path(entry).is_absolute() for entry in path.split(os.pathsep)):
        return  # the worktree's own, or looked for from the worktree: not known before it exists
    if shutil.which(program, path=path) is None:
        raise BadInputError(
            f"{where}: program {program!r} not found on PATH; install it"
            + (", fix its name, or install it in a `setup` step" if setup else " or fix its name")
        )

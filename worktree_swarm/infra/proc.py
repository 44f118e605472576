"""The one subprocess helper: argv lists only, never a shell."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, CommandError

# Variables that would redirect git away from the repository we name with -C.
GIT_LOCATION_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)


# The system's limits a process or a file can meet, by errno: not the program's doing, and gone
# once the limit allows (`swarm retry`).
_LIMITS = {
    errno.EAGAIN: "`ulimit -u`",
    errno.ENOMEM: "memory",
    errno.EMFILE: "`ulimit -n`",
    errno.ENFILE: "the system's open files",
}


def system_limit(code: int | None) -> str | None:
    """Which limit the errno *code* says the system met (``ulimit -n``...), or None."""
    return _LIMITS.get(code) if code is not None else None


# Open files a manager needs whatever its jobs: below it one dies starting its first git.
MIN_OPEN_FILES = 32


def require_open_files() -> None:
    """Refuse (BadInputError) when ``ulimit -n`` leaves a manager too few files to start.

    With 16 a manager recorded its run and died starting git, every task left pending.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        raise BadInputError(
            f"the open-file limit (`ulimit -n`) is {soft}, too few for swarm's manager (it"
            f" needs {MIN_OPEN_FILES}, and more with many jobs); raise it: `ulimit -n 1024`"
        )


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return os.environ without git's location variables, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if k not in GIT_LOCATION_VARS}
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    if extra:
        env.update(extra)
    return env


def task_env(extra: Mapping[str, str]) -> dict[str, str]:
    """:func:`clean_env` without the config git is given in the environment, plus *extra*.

    ``GIT_CONFIG_PARAMETERS`` (what a ``git -c`` alias that started swarm passes on) and
    ``GIT_CONFIG_COUNT`` with its ``GIT_CONFIG_KEY_<n>``/``GIT_CONFIG_VALUE_<n>``: a task's git
    reads the gitconfig swarm writes for it (your identity and ignore file), no more of yours.
    """
    env = {k: v for k, v in clean_env().items() if not _is_config_var(k)}
    env.update(extra)
    return env


def _is_config_var(name: str) -> bool:
    return name in {"GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"} or name.startswith(
        ("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")
    )


def run(
    argv: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input_text: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* to completion and capture stdout/stderr as text.

    Raises CommandError when *check* and the exit code is non-zero.
    """
    args = [str(a) for a in argv]
    proc = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else clean_env(),
        input=input_text,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, (proc.stdout or "") + (proc.stderr or ""))
    return proc


# Run as ``python -I -S -c _TIE PARENT ARGV...``: PR_SET_PDEATHSIG, then exec ARGV. The
# signals Python ignores at its start (SIGPIPE, SIGXFSZ) are given back their defaults first.
_TIE = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
for name in ("SIGPIPE", "SIGXFSZ"):
    signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"{sys.argv[2]} could not start: {exc.strerror}\\n")
    os._exit(127)
"""


def ended_with_me(argv: Sequence[str]) -> list[str]:
    """*argv*, started so that it is sent SIGTERM when this process dies (Linux; else as is).

    For a Ray actor's git: Ray kills the actor's worker with no word to it, and its child
    would run on with no one to wait for it. ``PR_SET_PDEATHSIG`` is set by a small Python
    launcher that then execs *argv* (kept across the exec), not by a ``preexec_fn``: that
    would run Python in the child of a fork of a process with many threads (a Ray worker's),
    which can deadlock. The signal comes when the thread that started it ends; it waits for
    the command meanwhile.
    """
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-S", "-c", _TIE, str(os.getpid()), *argv]


def output_files() -> list[Path]:
    """The regular files this process's stdout and stderr write to (``swarm run > run.log``).

    Read from ``/proc/self/fd``; empty where there is no such directory, and for terminals,
    pipes and files since deleted.
    """
    found: list[Path] = []
    for fd in (1, 2):
        try:
            info = os.fstat(fd)
            # Deleted: no name left. Asked of the descriptor, not the name: the file may be
            # in a directory this process cannot enter (`sudo -u someone swarm ... > /root/x`).
            if not stat.S_ISREG(info.st_mode) or info.st_nlink == 0:
                continue
            target = Path(f"/proc/self/fd/{fd}").readlink()
        except OSError:
            continue
        if target.is_absolute() and target not in found:
            found.append(target)
    return found


OPEN_FILES_WANTED = 8192


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """Raise this process's soft limit of open files towards *wanted*, within the hard limit.

    A manager holds a few files per task (git's pipes, logs, the guard's watches); at the
    1024 of many systems' soft limit, or macOS's 256, a batch at high ``--jobs`` ran out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        # Refused, it stays as it is: the guard and the tasks say what ran out.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))

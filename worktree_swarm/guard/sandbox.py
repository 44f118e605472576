"""Run an agent under bubblewrap: the whole filesystem read-only except what its task needs.

Writable: the task's worktree and its git admin dir, the git common dir (objects and refs, so
that the agent can commit), a private temp dir, the agent's config dir, the run's findings
file, and the run's ``sandbox_writable`` paths. Inside the common dir, what would
hit the user later or tamper with swarm stays read-only: hooks, config, info, the main
checkout's HEAD and index and other worktrees' admin dirs; swarm's own state is hidden but
for the task's own directory (read-only) and the paths above. The kernel's knobs under /proc
stay read-only too (as root, ``kernel.core_pattern`` would run a program as root). The box
gets a /tmp of its own and does not see the runtime dirs where servers that run what their
clients ask (tmux, D-Bus, systemd) listen.
An agent in a clone of its own (a node's, with the Ray executor) writes its clone, whose git
config, hooks and ``alternates`` stay read-only. See docs/sandbox.md for what this protects and
what it does not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import repo as git
from worktree_swarm.infra import boxinit, fs, lock, proc, shim_record

TEMP_VARS = ("TMPDIR", "TMP", "TEMP")
# Set to "1" for a sandboxed agent, whose swarm commands then say why they cannot change
# swarm's state. Only a message depends on it: an agent setting it outside a box gains nothing.
IN_BOX_VAR = "SWARM_SANDBOX"
_TRIAL_TIMEOUT = 30.0
# Namespace and privilege options shared by the trial run and every agent. A new PID
# namespace keeps the agent from reaching other processes: from signalling the manager or a
# sibling agent, and from writing through /proc/PID/root into another sandbox's mounts. The
# host still sees every process (psutil, kill_tree). Its PID 1 is swarm's box init, not
# bwrap's (which the agent could stop with ptrace, and so outlive): when the agent exits, so
# does the init, and the kernel kills whatever the agent left behind. Dropping all
# capabilities matters when swarm runs as root: with CAP_SYS_ADMIN the agent could simply
# remount / read-write.
_ISOLATION = (
    "--unshare-pid", "--as-pid-1", "--cap-drop", "ALL", "--dev", "/dev", "--proc", "/proc",
)  # fmt: skip
_INIT = Path(boxinit.__file__).resolve()
_INIT_LAUNCH = (
    f"import sys; sys.path.append({str(_INIT.parent)!r}); import {_INIT.stem}; {_INIT.stem}.run()"
)
# The kernel's knobs under the new /proc stay read-only: as root, `kernel.core_pattern` alone
# would have the kernel run a program of the agent's, as root, outside the box.
_KERNEL = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
# Servers that take commands over a Unix socket listen in the temp dirs and the runtime dirs:
# tmux (`tmux run-shell` runs anything, outside the box), screen, an editor's server, Claude
# Code's sessions, D-Bus and systemd (`systemd-run`), Docker. A socket stays reachable on a
# read-only mount, so the box gets empty ones of its own in their place (directories), or
# /dev/null (sockets); `sandbox_writable` binds one back. Abstract sockets are not files: a
# network namespace of its own would hide them, and the agent's API with them.
_HIDDEN_DIRS = ("/tmp", "/var/tmp", "/run/user", "/run/screen", "/run/dbus")  # noqa: S108
_HIDDEN_SOCKETS = ("/run/systemd/private", "/run/docker.sock")
# Inside the git common dir: read-only again on top of the writable common dir (its top stays
# writable: deleting a ref, `git stash drop` included, rewrites `packed-refs` there). A
# `commondir` planted there, which would point your next git at a config of the agent's, is
# the guard's to catch (guard.md).
_PROTECTED = (
    "hooks", "config", "config.worktree", "info", "HEAD", "index", "modules", "commondir",
    "rr-cache", "remotes", "branches", "objects/info",
)  # fmt: skip
# Those of them that may be missing (a repository made without git's template), made empty
# before a run takes its baseline: a path that does not exist cannot be bound read-only, and
# the agent could make it. (Not `rr-cache`, whose existence turns rerere on, `commondir`,
# `remotes` or `branches`: the guard undoes what appears there.)
_MADE_EMPTY = ("hooks", "info", "modules", "objects/info")
# The same in a clone of the agent's own, whose HEAD and index are its own.
_PROTECTED_IN_CLONE = ("hooks", "config", "config.worktree", "info", "modules")
# coverage.py's subprocess hook, set when swarm itself is measured (its test suite): in the
# box it would start in every Python process and fail at exit to write its data file outside
# the box, which changes the agent's last output line. Nothing of swarm runs in the box.
_COVERAGE_HOOK = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


@dataclass(frozen=True, slots=True, kw_only=True)
class Confinement:
    """What one sandboxed agent may write; everything else it can only read."""

    worktree: Path
    common_dir: Path
    state_dir: Path
    task_dir: Path  # the task's own directory in *state_dir*: its prompts and gitconfig
    config_dir: Path
    temp_dir: Path
    findings: Path
    extra: tuple[str, ...] = ()


def check_available() -> None:
    """Raise BadInputError (one line) unless bubblewrap can sandbox agents here."""
    if not sys.platform.startswith("linux"):
        raise BadInputError(
            f"--sandbox needs Linux with bubblewrap; this is {sys.platform}: "
            "run without --sandbox (and without `sandbox = true`)"
        )
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise BadInputError(
            "--sandbox needs bubblewrap (`bwrap`) on PATH: install it "
            "(e.g. `apt install bubblewrap`) or run without --sandbox"
        )
    try:
        trial = proc.run(
            [bwrap, "--ro-bind", "/", "/", *_ISOLATION, "--", sys.executable, "-c", "pass"],
            check=False,
            timeout=_TRIAL_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadInputError(f"{bwrap} does not run ({exc}); run without --sandbox") from exc
    if trial.returncode != 0:
        why = (trial.stderr.strip().splitlines() or [f"exit {trial.returncode}"])[-1]
        raise BadInputError(
            f"bubblewrap cannot create a sandbox here ({why}); allow unprivileged user "
            "namespaces (Debian: sysctl kernel.unprivileged_userns_clone=1; Ubuntu 24.04: "
            "kernel.apparmor_restrict_unprivileged_userns=0) or run without --sandbox"
        )


def confine(
    argv: Sequence[str], env: Mapping[str, str], box: Confinement
) -> tuple[list[str], dict[str, str]]:
    """Return the argv and environment that run *argv* under bubblewrap as *box* says.

    Creates (empty) the private temp dir, the config dir and the findings file (if the run has
    not made it yet), so that each can be bound; the agent's temp variables point at the temp dir.
    """
    release(box)  # what an earlier attempt left there
    box.temp_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    box.config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    box.findings.parent.mkdir(parents=True, exist_ok=True)
    box.findings.touch(exist_ok=True)
    wrapped = wrap(argv, box, path=env.get("PATH", ""))
    kept = {k: v for k, v in env.items() if k not in _COVERAGE_HOOK}
    return wrapped, {**kept, **dict.fromkeys(TEMP_VARS, str(box.temp_dir)), IN_BOX_VAR: "1"}


def under_init(argv: Sequence[str]) -> list[str]:
    """*argv* run by the box's PID 1 (see :mod:`worktree_swarm.infra.boxinit`).

    Its interpreter runs as the shim's does (``shim_record.SHIM_FLAGS``: isolated, no site).
    """
    return [sys.executable, *shim_record.SHIM_FLAGS, "-c", _INIT_LAUNCH, "--", *argv]


def prepare(common_dir: Path) -> None:
    """Make the protected directories of the git dir *common_dir* that do not exist yet."""
    for name in _MADE_EMPTY:
        (common_dir / name).mkdir(exist_ok=True)


def release(box: Confinement) -> None:
    """Remove the agent's private temp dir once its attempt is over."""
    shutil.rmtree(box.temp_dir, ignore_errors=True)


def wrap(argv: Sequence[str], box: Confinement, *, path: str = "") -> list[str]:
    """The bwrap command line that runs *argv* confined to *box* (paths must exist).

    Later mounts win over earlier ones, so the order is: everything read-only (the kernel's
    knobs in the new /proc too), the sockets' places hidden, the user's extra writable paths,
    the common dir writable, its protected parts read-only again, swarm's state hidden, then
    the task's own paths writable and the files that locate its repository read-only.
    *path* is the agent's ``PATH``: its directories in the hidden ones are bound back read-only.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SwarmError("bubblewrap (`bwrap`) is no longer on PATH; install it or drop --sandbox")
    # bwrap resolves a destination inside the new root, where a symlink in the path could
    # lead somewhere else than on the host: bind canonical paths on both sides.
    common = real_path(box.common_dir)
    worktree = real_path(box.worktree)
    admin = git.git_dir(worktree)
    args = [bwrap, "--ro-bind", "/", "/", *_ISOLATION]
    for knob in _KERNEL:
        args += ["--ro-bind-try", knob, knob]
    argv = under_init(argv)
    # Your checkout stays in sight wherever it is (`link`ed directories point into it), and so
    # does the box init (its interpreter and its file) wherever swarm is installed.
    named = [*argv, str(_INIT.parent), *path.split(os.pathsep), str(common.parent)]
    args += _hide_sockets(named)
    for extra in box.extra:
        args += _bind("--bind-try", real_path(Path(extra)))
    if real_path(admin) == common:  # a clone of its own (a node's, with executor `ray`)
        return [*args, *_clone_binds(worktree, box), "--chdir", str(worktree), "--", *argv]
    args += _bind("--bind", common)
    args += _alternates(common / "objects")
    for name in _PROTECTED:
        args += _bind("--ro-bind-try", common / name)
    args += _bind("--ro-bind", common / "worktrees")
    # swarm's state is hidden behind an empty file system, read-only once the task's own
    # paths are bound into it: a file the agent can open, it can lock (a read lock on the
    # store's shared memory holds every write of the manager off; one on a lock file of
    # swarm's, its worktree and branch changes). Its own directory (prompts, gitconfig) it
    # reads.
    state = real_path(box.state_dir)
    args += ["--tmpfs", str(state), *_bind("--ro-bind", real_path(box.task_dir))]
    # The manager's lock beside it: locked, it would hold off every `swarm resume` and have
    # `swarm stop` wait for a manager that is gone.
    args += ["--ro-bind", os.devnull, str(common / lock.GIT_DIR_LOCK)]
    for own in (worktree, admin, box.temp_dir, box.config_dir):
        args += _bind("--bind", real_path(own))
    args += _bind("--bind", real_path(box.findings))
    args += ["--remount-ro", str(state)]
    # Rewritten, these would point swarm's own git commands in the worktree (checkpoints,
    # which run outside the sandbox) at a repository the agent made up.
    args += _bind("--ro-bind", worktree / ".git")
    for name in ("commondir", "gitdir", "config.worktree"):
        args += _bind("--ro-bind-try", admin / name)
    return [*args, "--chdir", str(worktree), "--", *argv]


def _hide_sockets(named: Sequence[str]) -> list[str]:
    """Empty dirs and /dev/null in place of :data:`_HIDDEN_DIRS` and :data:`_HIDDEN_SOCKETS`.

    What *named* (the agent's command and ``PATH``, your checkout) names there is bound back
    read-only: a directory, a file's directory (the modules beside a script), or a file alone
    right in a hidden dir; for a ``bin`` directory its prefix (a venv's ``lib`` beside it).
    """
    args: list[str] = []
    hidden = [real_path(path) for path in _HIDDEN_DIRS if Path(path).is_dir()]
    for top in hidden:
        args += ["--perms", "01777", "--tmpfs", str(top)]
    for sock in _HIDDEN_SOCKETS:
        if os.path.lexists(sock):
            args += ["--ro-bind", os.devnull, sock]
    # As named (a venv's `bin/python` is a link out of it) and as resolved.
    found = {
        seen
        for arg in map(Path, named)
        if arg.is_absolute() and arg.exists()
        for seen in (Path(os.path.normpath(arg)), real_path(arg))
    }
    for path in sorted(found - set(hidden)):
        if any(path.is_relative_to(top) for top in hidden):
            kept = path if path.parent in hidden or path.is_dir() else path.parent
            if kept.name == "bin" and kept.parent not in hidden:  # a venv's or a tool's prefix
                kept = kept.parent
            args += _bind("--ro-bind", kept)
    return args


def _alternates(objects: Path) -> list[str]:
    """Read-only binds of the object stores *objects* borrows from (which may be hidden)."""
    try:
        listed = fs.read_text(objects / "info" / "alternates")
    except (OSError, ValueError):  # none, or not a file git could read either
        return []
    args: list[str] = []
    for line in listed.splitlines():
        if line.strip() and not line.startswith("#"):
            args += _bind("--ro-bind-try", real_path(objects / line.strip()))
    return args


def _clone_binds(clone: Path, box: Confinement) -> list[str]:
    """The writable paths of an agent in a clone of its own: all of it but its git config.

    Its ``.git`` is its own (HEAD, index, objects, refs), so the agent commits there; what
    swarm's own git commands in the clone would run or read (hooks, config, info, the
    ``alternates`` file that points at the node's mirror) stays read-only.
    """
    dotgit = clone / ".git"
    args = [*_bind("--bind", clone), *_alternates(dotgit / "objects")]
    args += _bind("--ro-bind", real_path(box.task_dir))  # its prompts and gitconfig
    for name in (*_PROTECTED_IN_CLONE, "objects/info/alternates"):
        args += _bind("--ro-bind-try", dotgit / name)
    for own in (box.temp_dir, box.config_dir):
        args += _bind("--bind", real_path(own))
    args += _bind("--bind", real_path(box.findings))
    return args


def _bind(option: str, path: Path) -> list[str]:
    return [option, str(path), str(path)]

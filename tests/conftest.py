"""Shared fixtures: a pinned environment and real temporary git repositories."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from worktree_swarm import cli
from worktree_swarm.infra import redact, shim_record

# A shell that starts the tests in the background (`pytest &` in a script) makes them ignore
# SIGINT (POSIX), and every `swarm run` they start would ignore it too: the tests that press
# Ctrl-C need Python's own handler, which a started process then gets back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _pinned_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the developer's real git config and home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.com")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "SWARM_RUN_ID", "SWARM_TASK_ID"):
        monkeypatch.delenv(var, raising=False)


def git(cwd: Path, *args: str) -> str:
    """Run git in *cwd* and return stdout (stripped)."""
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def checkpoint_lines(cwd: Path, ref: str) -> list[str]:
    """The subject of *ref*'s commit, then its trailers (Swarm-Task, Swarm-Attempt, ...)."""
    return git(cwd, "log", "-1", "--format=%s%n%(trailers:only,unfold)", ref).splitlines()


def retried_tip(repo: Path) -> str:
    """The previous tip the one ``retry`` event of *repo*'s runs names."""
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db:
        (row,) = db.execute("SELECT data FROM events WHERE kind = 'retry'").fetchall()
    return str(json.loads(row[0])["previous_tip"])


def unrecord_launch(repo: Path, task: str, number: int) -> None:
    """Leave what a manager killed between a launch and its attempt's record leaves.

    The intent (``launching``), no attempt: attempt *number* of *task* goes from the store.
    """
    with contextlib.closing(sqlite3.connect(repo / ".git" / "swarm" / "state.db")) as db, db:
        db.execute("DELETE FROM attempts WHERE task_id = ? AND number = ?", (task, number))
        db.execute(
            "UPDATE tasks SET launching = ?, attempts = ? WHERE task_id = ?",
            (number, number - 1, task),
        )


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """Create a git repository at *path* with one commit of *files* on main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "hello\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


# Commands that only read what runs left (`logs` without -f): the tests run them in their own
# process, the same code as a `swarm` process but ~0.4 s less each (an interpreter, swarm's
# imports, coverage's start-up); every other command, which starts or changes something, runs
# as a real `swarm` process.
READ_ONLY_COMMANDS = frozenset({"status", "report", "runs", "diff", "notes", "logs"})


def add_submodule(repo: Path, origin: Path) -> None:
    """Add the submodule `lib` to *repo*: a repository made at *origin* (a README), committed."""
    lib = make_repo(origin, {"README.md": "lib\n"})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(lib), "lib")
    git(repo, "commit", "-q", "-m", "add lib")


def reads_only(args: tuple[str, ...]) -> bool:
    """Whether ``swarm ARGS`` only reads and returns (not `logs -f`, which waits)."""
    return bool(args) and args[0] in READ_ONLY_COMMANDS and not {"-f", "--follow"} & set(args)


def swarm_here(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``swarm ARGS`` run in this process as if started in *cwd*: its exit code and output."""
    out, err = _byte_stream(), _byte_stream()
    before = Path.cwd()
    redact._current = None  # the environment as it is now, as a new process would read it
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = int(cli.main(list(args)))
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["swarm", *args], code, _text(out), _text(err))


def _byte_stream() -> io.TextIOWrapper:
    """A text stream with a byte buffer beneath, as ``sys.stdout`` has."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)


def _text(stream: io.TextIOWrapper) -> str:
    """What *stream* got, read as ``subprocess.run(text=True)`` reads a pipe: universal newlines."""
    stream.flush()
    raw = stream.detach()
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8").read()


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture(autouse=True)
def _nothing_left_running_after_a_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """End what a failed test left working in its own temporary directory.

    An agent outlives its killed manager by design, so a crash test that fails before it lets
    its agents finish would leave them (and their shims) running for ever. Only processes that
    work in this test's ``tmp_path`` or run a program from it are ended, with their children.
    """
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder: Path = request.getfixturevalue("tmp_path")  # set up first: torn down after this
    yield
    if request.node.stash.get(_FAILED, False):
        end_processes_in(folder)


def end_processes_in(folder: Path) -> list[psutil.Process]:
    """SIGKILL every process (and its children) working in or run from *folder*; not this one."""
    root = str(folder.resolve())

    def inside(path: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    spared = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if inside(proc.cwd()) or any(inside(arg) for arg in proc.cmdline()):
                for one in (proc, *proc.children(recursive=True)):
                    found.setdefault(one.pid, one)
    doomed = [p for pid, p in found.items() if pid not in spared]
    for proc in doomed:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the process is still the one found (pid reuse)
    psutil.wait_procs(doomed, timeout=10)
    return doomed


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository at tmp_path/repo with one commit on main."""
    return make_repo(tmp_path / "repo")


# Set by coverage.py in the processes it measures (`scripts/check`), so that every Python
# process started below measures itself.
_COVERAGE_HOOK = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def as_owner_only() -> list[str]:
    """A command prefix that takes away root's power to ignore file permissions (else none)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    prefix = [setpriv or "setpriv", "--bounding-set=-dac_override,-dac_read_search",
              "--inh-caps=-all", "--"]  # fmt: skip
    if setpriv is None or subprocess.run([*prefix, "true"], check=False).returncode != 0:
        pytest.skip("root that cannot drop its override of file permissions (setpriv)")
    return prefix


def agent_python() -> list[str]:
    """The interpreter command for a fake agent: without coverage's start-up hook.

    Fake agents are the tests' programs, not swarm's code: measuring them would cost every
    agent coverage's start-up and a data file to combine, and a sandboxed agent could not
    even write that file. Every swarm process around them (CLI, manager, shim) is measured.
    """
    unset = [arg for name in _COVERAGE_HOOK if name in os.environ for arg in ("-u", name)]
    return ["env", *unset, sys.executable] if unset else [sys.executable]


# The start of a `git` wrapper's script: $sub, the subcommand, the first argument after
# swarm's `-c key=value` overrides (and a `-C dir`).
GIT_SUBCOMMAND = (
    "#!/bin/sh\n"
    'sub=""; skip=0\n'
    'for a in "$@"; do\n'
    "  if [ $skip = 1 ]; then skip=0; continue; fi\n"
    '  case "$a" in -c|-C) skip=1;; -*) ;; *) sub="$a"; break;; esac\n'
    "done\n"
)


def git_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: Callable[[str], str]
) -> None:
    """Put a `git` first on PATH: the shell script *script* makes of the real git's path."""
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "gitbin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(script(shlex.quote(real)))
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def hang_git_at(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    *,
    after: bool = False,
    then: str = "exec sleep 600",
    nth: int = 1,
    word: str | None = None,
) -> Path:
    """Put a `git` first on PATH whose first *step* (``read-tree``, ``merge``) hangs, before it
    runs or (*after*) once it has; returns the flag file it touches then. Everything else is
    the real git. *then*: the shell it runs instead of git's step (by default, it sleeps).
    *nth*: the *nth* such step hangs, not the first; *word*: only a step with that argument
    counts (``worktree`` ``add``, not ``worktree list``)."""
    flag = tmp_path / "hung"
    run_first = '{real} "$@"; ' if after else ""
    taken = shlex.quote(str(tmp_path / "taken"))
    claim = (
        f"mkdir {taken} 2>/dev/null"
        if nth == 1
        else f'{{ i=0; until mkdir {taken}.$((i+=1)) 2>/dev/null; do :; done; [ "$i" = {nth} ]; }}'
    )
    has_word = "" if word is None else f'case " $* " in *" {word} "*) ;; *) false;; esac && '
    git_first_on_path(tmp_path, monkeypatch, lambda real: (
        GIT_SUBCOMMAND
        + f'if [ "$sub" = {shlex.quote(step)} ] && {has_word}{claim}; then\n'
        f"  {run_first.format(real=real)}touch {shlex.quote(str(flag))}; {then}\nfi\n"
        f'exec {real} "$@"\n'
    ))  # fmt: skip
    return flag


def killed_at_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str, argv: Sequence[str]
) -> None:
    """Run *argv* in a session of its own and SIGKILL it all once its first git *step* starts.

    The real git from then on (:func:`hang_git_at`).
    """
    hung = hang_git_at(tmp_path, monkeypatch, step)
    proc = subprocess.Popen(argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not hung.exists():
            assert proc.poll() is None, f"{argv} ended before its git {step}"
            assert time.monotonic() < deadline, f"timed out waiting for {argv}'s git {step}"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (tmp_path / "gitbin" / "git").unlink()


def agent_command() -> str:
    """:func:`agent_python` as the start of a command line (``--agent``, ``--check``)."""
    return " ".join(agent_python())


def script_interpreter() -> str:
    """The ``#!`` line of a fake agent program run by its own name (a fake CLI).

    Like :func:`agent_python`, without coverage's start-up hook: under coverage ``-S`` (no
    site, so no hook; such a program uses the standard library only).
    """
    hooked = any(name in os.environ for name in _COVERAGE_HOOK)
    return f"#!{sys.executable} -S" if hooked else f"#!{sys.executable}"


@pytest.fixture(autouse=True)
def _measured_shims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under coverage, shims this test process spawns keep site, so coverage's hook measures them.

    Users' shims run ``python -I -S`` (no site, so no hook). Only the shims spawned from the
    tests' own process are measured (the supervisor and shim tests exercise every path):
    measuring the shim of every agent the `swarm` processes start would add ~0.15 s of
    coverage start-up to each and about a minute to the suite.
    """
    if any(os.environ.get(name) for name in _COVERAGE_HOOK):
        monkeypatch.setattr(shim_record, "SHIM_FLAGS", ("-I",))


@pytest.fixture
def write_agent(tmp_path: Path) -> Callable[[str], list[str]]:
    """Return a function that writes a Python fake-agent script and returns its argv prefix."""
    counter = iter(range(10_000))

    def _write(source: str) -> list[str]:
        script = tmp_path / f"agent_{next(counter)}.py"
        script.write_text(source)
        return [*agent_python(), str(script)]

    return _write


@contextlib.contextmanager
def tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* (``24m``) mounted under *tmp_path* (skips where mounting is refused)."""
    mount = Path(tempfile.mkdtemp(prefix="swarm-full-", dir=tmp_path))
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mount
    finally:
        end_processes_in(mount)  # an agent still working there would keep the disk busy
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs mounted for the test (skips where mounting is not allowed)."""
    with tmpfs(tmp_path, "24m") as mount:
        yield mount


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start a Ray cluster run one after another on one worker (``--dist
    loadgroup``, as ``scripts/check --slow`` runs them): each cluster's nodes claim the cores
    and the memory they are given, and two at once on a 2-core box only load each other."""
    for item in items:
        if item.path.name in {"test_ray.py", "test_ray_head.py"}:
            item.add_marker(pytest.mark.xdist_group("ray"))

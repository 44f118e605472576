"""A table of bad input to the real CLI: one line on stderr, exit 2, the repository as it was.

Each row is one attack on what `swarm` reads (a manifest, flags, the environment, the
repository itself); none runs an agent. What is left is compared whole: refs, worktrees, and
every file under the repository's parent (its .git, its checkout, a `<repo>.swarm` beside it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from tests.conftest import git

D = "[defaults]\n"
TASK = '[[task]]\nid = "a"\nprompt = "p"\n'
RUN = ("run", "../m.toml", "--agent", "scripted")
INLINE = ("run", "--agent", "scripted", "-t", "a=p")
BIG = "x" * 200_000  # past the 128 KiB of one argument or environment variable
ID_RULE = "must match [a-z0-9][a-z0-9._-]{0,62}"
NO_RUNS = "no swarm runs in {repo} yet; start one with `swarm run`"


def _fifo(repo: Path) -> None:
    os.mkfifo(repo.parent / "fifo")


def _link_to_stdin(repo: Path) -> None:
    (repo.parent / "m.toml").symlink_to("/dev/stdin")


def _loop(repo: Path) -> None:
    (repo.parent / "m.toml").symlink_to("m.toml")


def _plain_dir(repo: Path) -> None:
    (repo.parent / "plain").mkdir()


def _bare(repo: Path) -> None:
    shutil.rmtree(repo / ".git")
    git(repo.parent, "init", "-q", "--bare", "-b", "main", str(repo))


def _no_commits(repo: Path) -> None:
    shutil.rmtree(repo / ".git")
    git(repo, "init", "-q", "-b", "main")


def _dangling_git_file(repo: Path) -> None:
    shutil.rmtree(repo / ".git")
    (repo / ".git").write_text(f"gitdir: {repo.parent / 'gone'}\n")


def _row(
    name: str,
    args: tuple[str, ...],
    said: str,
    *,
    manifest: str | bytes | None = None,
    setup: Callable[[Path], None] | None = None,
    env: Mapping[str, str] | None = None,
) -> object:
    return pytest.param(args, said, manifest, setup, env or {}, id=name)


def _toml(name: str, said: str, manifest: str | bytes | None) -> object:
    """A row of `swarm run` of the manifest *manifest*."""
    return _row(name, RUN, said, manifest=manifest)


ROWS = [
    # --- the manifest file ---
    _toml("manifest not utf-8", "not UTF-8 text (byte 0xe9", b"# caf\xe9\n"),
    _row("manifest a directory", ("run", "..", "--agent", "scripted"), "..: not a regular file"),
    _toml("manifest empty", "no tasks: give a manifest", ""),
    _toml("manifest missing", "../m.toml: cannot read: No such file", None),
    _row("manifest a fifo", ("run", "../fifo"), "../fifo: not a regular file", setup=_fifo),
    _row("manifest /dev/zero", ("run", "/dev/zero"), "/dev/zero: not a regular file"),
    _row("manifest -> /dev/stdin", RUN, "../m.toml: not a regular file", setup=_link_to_stdin),
    _row("manifest a symlink loop", RUN, "Too many levels of symbolic links", setup=_loop),
    _row(
        "manifest over 16 MiB",
        RUN,
        "../m.toml: larger than 16 MiB",
        manifest=TASK + "# " + "x" * 16 * 2**20 + "\n",
    ),
    _toml("toml syntax", "../m.toml: invalid TOML", "[[task]\n"),
    _toml("toml nested", "nested too deeply", "x = " + "[" * 9999 + "]" * 9999),
    _row(
        "toml 5000-digit integer",
        RUN,
        "../m.toml: invalid TOML: an integer of more than 4300 digits",
        manifest=D + "jobs = " + "9" * 5000 + "\n" + TASK,
    ),
    _toml("unknown top key", "unknown key 'tasks'", '[[tasks]]\nid = "a"\n'),
    _toml("unknown task key", "unknown key 'promt'", TASK + 'promt = "x"\n'),
    # --- task ids: each a path component and a ref name ---
    _toml("id twice", "duplicate id 'a'", TASK + TASK),
    *(
        _row(f"id {bad!r}", ("run", "--agent", "scripted", "-t", f"{bad}=p"), ID_RULE)
        for bad in ("a..b", "a/b", "a b", "-a", "\u0430", "a" * 300, "a.lock", "a@{b", "a.")
    ),
    _row("id newline", RUN, ID_RULE, manifest='[[task]]\nid = "a\\n"\nprompt = "p"\n'),
    _row("id reserved", ("run", "--agent", "scripted", "-t", "guard=p"), "'guard' is reserved"),
    # --- values of the wrong type or out of range ---
    _toml("jobs a string", "jobs: expected an integer", D + 'jobs = "4"\n' + TASK),
    _toml("jobs -1", "jobs: must be >= 1, got -1", D + "jobs = -1\n" + TASK),
    _toml("jobs 0", "jobs: must be >= 1, got 0", D + "jobs = 0\n" + TASK),
    _toml("jobs 10**9", "goes past port 65535", D + "jobs = 1000000000\n" + TASK),
    _toml("cost nan", "max_cost_usd: expected a positive", D + "max_cost_usd = nan\n" + TASK),
    _toml("cost inf", "max_cost_usd: expected a positive", D + "max_cost_usd = inf\n" + TASK),
    _toml("timeout inf", "timeout: bad duration inf", D + "timeout = inf\n" + TASK),
    _toml("checks a string", "checks: expected an array", TASK + 'checks = "pytest"\n'),
    _toml("setup a string", "setup: expected an array", TASK + 'setup = "make"\n'),
    _toml("check unquoted", "checks[0]: cannot split", TASK + 'checks = ["echo \'a"]\n'),
    _toml("files absolute", "files[0]: '/etc' must be a relative", TASK + 'files = ["/etc"]\n'),
    _toml(
        "copy into .git",
        "copy[0]: '.git/config' reaches into .git",
        TASK + 'copy = [".git/config"]\n',
    ),
    _toml("link missing", "link 'nope'", TASK + 'link = ["nope"]\n'),
    _toml("worktree_root in .git", "is inside", D + 'worktree_root = ".git/w"\n' + TASK),
    # --- dependencies and agents ---
    _toml("depends on itself", 'task "a": depends on itself', TASK + 'depends_on = ["a"]\n'),
    _toml(
        "depends on a missing task", "depends_on 'zz' is not a task", TASK + 'depends_on = ["zz"]\n'
    ),
    _row(
        "cycle",
        RUN,
        "dependency cycle: a -> b -> a",
        manifest=TASK
        + 'depends_on = ["b"]\n[[task]]\nid = "b"\nprompt = "q"\ndepends_on = ["a"]\n',
    ),
    _row("unknown profile", ("run", "--agent", "nosuch", "-t", "a=p"), "unknown agent 'nosuch'"),
    _toml("unknown fallback", "fallback[0]: unknown agent", TASK + 'fallback = ["nosuch"]\n'),
    # --- env, and what a program can be started with ---
    _toml("env name with =", "'A=B' is not a valid", TASK + 'env = {"A=B" = "x"}\n'),
    _toml("env NUL", "contains a NUL character", TASK + 'env = {A = "x\\u0000"}\n'),
    _toml("env SWARM_", "SWARM_X is swarm's to set", TASK + 'env = {SWARM_X = "x"}\n'),
    _toml("env GIT_DIR", "GIT_DIR points git elsewhere", TASK + 'env = {GIT_DIR = "x"}\n'),
    _toml("env value 200K", "env: A's value: 195K long", f'{TASK}env = {{A = "{BIG}"}}\n'),
    _toml("check argument 200K", "checks[0][1]: 195K long", f'{TASK}checks = ["echo {BIG}"]\n'),
    _row(
        "agent argument 200K",
        RUN,
        "agent[2]: 195K long",
        manifest=f'{TASK}agent = ["python3", "-c", "{BIG}"]\n',
    ),
    # --- flags ---
    _row("-j abc", (*INLINE, "-j", "abc"), "--jobs: expected an integer, got 'abc'"),
    _row("-j arabic 3", (*INLINE, "-j", "\u0663"), "--jobs: expected an integer"),
    _row("-j 0", (*INLINE, "-j", "0"), "--jobs: must be >= 1, got 0"),
    _row("--retries -1", (*INLINE, "--retries", "-1"), "--retries: must be >= 0"),
    _row(
        "--max-cost-usd -1",
        (*INLINE, "--max-cost-usd", "-1"),
        "--max-cost-usd: expected a positive",
    ),
    _row("--max-cost-usd arabic 3", (*INLINE, "--max-cost-usd", "\u0663"), "expected a number"),
    _row("--limit arabic 3", ("run", "--issues", "1", "--limit", "\u0663"), "--limit: expected an"),
    _row("--limit 0", ("run", "--issues", "1", "--limit", "0"), "--limit: must be >= 1, got 0"),
    _row("demo -j arabic 3", ("demo", "-j", "\u0663"), "--jobs: expected an integer"),
    _row("plan -j arabic 3", ("plan", "goal", "-j", "\u0663"), "--jobs: expected an integer"),
    _row(
        "plan --max-tasks arabic 3",
        ("plan", "goal", "--max-tasks", "\u0663"),
        "--max-tasks: expected an integer",
    ),
    _row("--timeout nan", (*INLINE, "--timeout", "nan"), "--timeout: bad duration 'nan'"),
    _row("--max-disk 0", (*INLINE, "--max-disk", "0"), "--max-disk: bad size '0'"),
    _row("-t without =", ("run", "--agent", "scripted", "-t", "abc"), "expected ID=PROMPT"),
    _row(
        "prompt file a fifo",
        ("run", "--prompt-file", "a=../fifo"),
        "not a regular file",
        setup=_fifo,
    ),
    _row("prompt file /dev/zero", ("run", "--prompt-file", "a=/dev/zero"), "not a regular file"),
    _row("unknown command", ("bogus",), "No such command 'bogus'"),
    _row("unknown option", ("run", "--bogus"), "No such option '--bogus'"),
    _row("no command", (), "no command given"),
    # --- the environment swarm reads ---
    _row(
        "SWARM_TASK_ID",
        ("note", "x"),
        "SWARM_TASK_ID: '../x' is not",
        env={"SWARM_TASK_ID": "../x"},
    ),
    _row(
        "SWARM_CONTEXT",
        ("note", "x"),
        "SWARM_CONTEXT: expected an absolute",
        env={"SWARM_CONTEXT": "f"},
    ),
    _row(
        "ANTHROPIC_BASE_URL",
        ("plan", "goal"),
        "ANTHROPIC_BASE_URL: 'ftp://x' is not",
        env={"ANTHROPIC_API_KEY": "sk-x", "ANTHROPIC_BASE_URL": "ftp://x"},
    ),
    # --- the repository ---
    _row("-C missing", ("-C", "../nowhere", *INLINE), "-C '../nowhere': No such file"),
    _row(
        "-C not a repository",
        ("-C", "../plain", *INLINE),
        "is not inside a git repository",
        setup=_plain_dir,
    ),
    _row("bare repository", INLINE, "is a bare repository", setup=_bare),
    _row("no commits", INLINE, "has no commits yet", setup=_no_commits),
    _row(".git naming nothing", INLINE, "is not inside a git repository", setup=_dangling_git_file),
    # --- commands that read a run, with none there ---
    *(
        _row(" ".join(args), args, NO_RUNS)
        for args in (
            ("status", "--run", "nosuch"),
            ("merge", "nosuch"),
            ("pr", "nosuch"),
            ("retry", "nosuch"),
            ("stop", "nosuch"),
            ("logs", "../x"),
        )
    ),
    _row("watch without a terminal", ("watch",), "swarm watch needs a terminal"),
]


def _state(repo: Path) -> dict[str, object]:
    """Refs, worktrees, and each file under *repo*'s parent with its size (index: git's cache)."""
    return {
        "refs": _git_says(repo, "for-each-ref"),
        "worktrees": _git_says(repo, "worktree", "list", "--porcelain"),
        "files": sorted(
            (str(p.relative_to(repo.parent)), "dir" if p.is_dir() else p.lstat().st_size)
            for p in repo.parent.rglob("*")
            if p.name != "index"
        ),
    }


def _git_says(repo: Path, *args: str) -> tuple[int, str, str]:
    """What git answers in *repo*, an error too (a `.git` naming nothing is one row's repo)."""
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return out.returncode, out.stdout, out.stderr


def _swarm(
    repo: Path, args: tuple[str, ...], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """The real CLI in *repo*; its stdin a pipe held open, so a read of it waits (and times out)."""
    stdin, held = os.pipe()
    try:
        return subprocess.run(
            [sys.executable, "-m", "worktree_swarm.cli", *args],
            cwd=repo,
            stdin=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=60,
            check=False,
        )
    finally:
        os.close(stdin)
        os.close(held)


@pytest.mark.parametrize(("args", "said", "manifest", "setup", "env"), ROWS)
def test_bad_input_is_one_line_exit_2_and_nothing_made(
    repo: Path,
    args: tuple[str, ...],
    said: str,
    manifest: str | bytes | None,
    setup: Callable[[Path], None] | None,
    env: Mapping[str, str],
) -> None:
    if manifest is not None:
        data = manifest if isinstance(manifest, bytes) else manifest.encode()
        (repo.parent / "m.toml").write_bytes(data)
    if setup is not None:
        setup(repo)
    before = _state(repo)
    out = _swarm(repo, args, env)
    assert (out.returncode, out.stdout) == (2, ""), out
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("swarm: "), out.stderr
    assert "Traceback" not in out.stderr
    assert said.replace("{repo}", str(repo)) in out.stderr, out.stderr
    assert _state(repo) == before

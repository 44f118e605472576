"""The one git runner: every git command swarm runs for itself goes through :func:`run`.

Each command is one :func:`subprocess.run` (no shell, stdin closed, messages in English)
with ``-c`` overrides that switch off what a repository's own files could make git execute
(hooks, fsmonitor, filter/diff/merge drivers, signing, transport commands), so an agent that
plants config in the repository cannot run code through swarm's checkpoints, scans or
merges. docs/guard.md lists them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

from worktree_swarm.core.errors import BadInputError, CommandError, GitError, GitStartError
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import sparse
from worktree_swarm.infra import fs, pipes
from worktree_swarm.infra.proc import clean_env, system_limit

# Overrides on every command. Each names a setting that makes plain git commands execute a
# program (with the git version that introduced it), or that does work swarm never wants.
ALWAYS: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", os.devnull),  # hooks, incl. reference-transaction (2.28) and post-checkout
    ("core.fsmonitor", "false"),  # a command or hook path (2.16; builtin daemon 2.36)
    ("core.editor", "true"),
    ("sequence.editor", "true"),
    ("core.pager", "cat"),
    ("commit.gpgSign", "false"),
    ("push.gpgSign", "false"),  # a push certificate: the signing program (or ssh key command)
    # A signature check runs gpg, and swarm's own checkpoints are never signed: every merge of
    # a task's branch would fail on them.
    ("merge.verifySignatures", "false"),
    ("tag.gpgSign", "false"),
    ("protocol.ext.allow", "never"),
    ("core.commitGraph", "false"),  # commits as they are, not as a graph file anyone can write
    ("gc.auto", "0"),  # no automatic gc after swarm's own commits
    ("maintenance.auto", "false"),  # 2.29: `git maintenance run --auto` after commits
    # Never git in a submodule, under its own config: not by recursion, nor for a summary.
    ("submodule.recurse", "false"),
    ("diff.submodule", "short"),
    ("status.submoduleSummary", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("push.recurseSubmodules", "no"),
    # Your settings that make swarm's own work fail or its patches unusable: with
    # core.autocrlf, safecrlf refused every checkpoint of a file that would not round-trip;
    # without prefixes (or with i/ and w/) a patch swarm keeps is one `git apply` refuses.
    ("core.safecrlf", "false"),
    ("diff.noprefix", "false"),
    ("diff.mnemonicPrefix", "false"),
    ("diff.relative", "false"),
)

# Per-driver keys that run a program; neutralised when repository-level config defines them.
_DRIVER_KEYS = {
    "filter": {"clean": "", "smudge": "", "process": "", "required": "false"},
    "diff": {"textconv": "cat", "command": "false"},  # and --no-ext-diff/--no-textconv
    "merge": {"driver": "false"},  # `false` fails the merge driver: a conflict, never code
    "credential": {"helper": ""},  # credential.<url>.helper: an empty value clears the list
}
# What a fetch or push to a local or ssh remote starts on the other side. git takes the first
# value it reads, so no `-c` overrides a planted one: the command's own option does.
_PACK_KEYS = {"uploadpack": "git-upload-pack", "receivepack": "git-receive-pack"}
_PACK_OPTIONS = {
    "fetch": ("uploadpack", "--upload-pack"),
    "pull": ("uploadpack", "--upload-pack"),
    "ls-remote": ("uploadpack", "--upload-pack"),
    "push": ("receivepack", "--receive-pack"),
}
# Plain keys that run a program when set in repository-level config.
_EXEC_KEYS = {
    "core.sshcommand": "ssh",
    "core.gitproxy": "",
    "core.askpass": "",
    "credential.helper": "",
    "core.alternaterefscommand": "",
    "gpg.program": "gpg",
    "gpg.ssh.program": "ssh-keygen",
    "gpg.ssh.defaultkeycommand": "false",  # asked for the key to sign with
    "gpg.x509.program": "gpgsm",
    "gpg.openpgp.program": "gpg",
    "uploadpack.packobjectshook": "",
}
_UNTRUSTED_SCOPES = ("local", "worktree")
# On every command: never prompt, messages in English (some are matched), and the objects as
# they are: a replace ref (`git replace`, `refs/replace/`) would show swarm a harmless blob
# in place of the one a push sends, restores put back or a merge takes.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "LANGUAGE": "C",
    "LC_ALL": "C",
    "GIT_NO_REPLACE_OBJECTS": "1",
}
# Your environment's settings that change what swarm's pathspecs (``:(literal,top)name``,
# ``:(exclude)``) and attributes mean: a checkpoint then failed, or its size cap matched nothing.
_GIT_ENV_DROPPED = (
    "GIT_LITERAL_PATHSPECS",
    "GIT_GLOB_PATHSPECS",
    "GIT_NOGLOB_PATHSPECS",
    "GIT_ICASE_PATHSPECS",
    "GIT_ATTR_SOURCE",
)


def overrides(cwd: Path) -> tuple[list[str], dict[str, str]]:
    """The arguments that make a git command in *cwd* immune to planted config, and their env.

    Each is ``-c KEY=VALUE``, but for a key whose name holds ``=`` (a driver named ``a=b``,
    which an attribute ``filter=a=b`` selects): git splits ``-c`` at the first ``=``, so that
    one is ``--config-env=KEY=VAR`` (split at the last), its value in the returned variable.
    In a sparse task worktree (one with its own ``info/sparse-checkout``) they also switch
    sparse checkout on, so that git applies the patterns and, reading the index, takes back
    into view any skipped file an agent wrote (otherwise its work there would go unseen).
    """
    files = _config_files(cwd)
    args: list[str] = []
    values: dict[str, str] = {}
    for key, value in (*ALWAYS, *_repository_exec_settings(cwd, files), *_sparse_settings(files)):
        if key.startswith("remote."):
            continue
        if "=" in key:
            var = f"SWARM_GIT_CONFIG_{len(values)}"
            values[var] = value
            args.append(f"--config-env={key}={var}")
        else:
            args += ["-c", f"{key}={value}"]
    return args, values


def neutral_filters(cwd: Path) -> frozenset[str]:
    """The filter drivers the repository's own config defines in *cwd*: git never runs them.

    A file whose attributes select one is hashed by swarm's `git add` as it is on disk (no
    clean filter: a git-crypt file would be committed in the clear).
    """
    settings = _repository_exec_settings(cwd, _config_files(cwd))
    return frozenset(
        key.partition(".")[2].rpartition(".")[0]
        for key, _ in settings
        if key.partition(".")[0].lower() == "filter"
    )


def _planted_packs(cwd: Path) -> set[str]:
    """The ``remote.<name>.uploadpack``/``receivepack`` leaves the repository's config sets."""
    settings = _repository_exec_settings(cwd, _config_files(cwd))
    return {key.rpartition(".")[2] for key, _ in settings if key.startswith("remote.")}


def _sparse_settings(files: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    if not files:
        return ()
    admin, common = files[0].parent, files[1].parent
    if admin != common and sparse.pattern_file(admin).is_file():
        return sparse.SETTINGS
    return ()


_cache_lock = threading.Lock()
_cache: dict[tuple[object, ...], tuple[tuple[str, str], ...]] = {}
# Entries per cache (oldest used dropped first). Keyed per checkout: a run adds one per task
# worktree, and one of a task long ended is rarely asked again (a miss reads three small files).
_CACHE_MAX = 256


def _bounded_put(cache: dict[Any, Any], key: object, value: object) -> None:
    """Put *key* in *cache* as its newest entry, the oldest dropped past ``_CACHE_MAX``."""
    cache.pop(key, None)
    while len(cache) >= _CACHE_MAX:
        del cache[next(iter(cache))]
    cache[key] = value


def git_dir(checkout: Path) -> Path:
    """The git dir of *checkout*: its ``.git`` directory, or the one its ``.git`` file names.

    For a linked worktree that is its admin dir, ``<common dir>/worktrees/<name>``.
    Raises GitError when *checkout* has neither.
    """
    dotgit = checkout / ".git"
    if dotgit.is_dir():
        return dotgit
    try:
        text = os.fsdecode(fs.read_file(dotgit))
    except OSError as exc:
        raise GitError(f"{dotgit}: cannot read ({exc}); is {checkout} a git checkout?") from exc
    if not text.startswith("gitdir:"):
        raise GitError(f"{dotgit}: not a git checkout's .git file")
    # Relative since git 2.48 with worktree.useRelativePaths.
    return real_path(checkout / text.removeprefix("gitdir:").strip())


# Per checkout: the stats of its `.git` and of `commondir` when its config files were located.
_located: dict[str, tuple[object, Path, object, list[Path]]] = {}


def _config_files(cwd: Path) -> list[Path]:
    """The repository-level config files that apply in *cwd* (best effort, no git call)."""
    # Locating them resolves every component of two paths; it is done again only when the
    # files that name them (`.git`, `commondir`) change.
    dotgit = _signature(cwd / ".git")
    with _cache_lock:
        known = _located.get(str(cwd))
        if known is not None:  # the newest again: used last, dropped last
            _located[str(cwd)] = _located.pop(str(cwd))
    if known is not None and known[0] == dotgit and _signature(known[1] / "commondir") == known[2]:
        return known[3]
    try:
        admin = git_dir(cwd)
    except GitError:
        return []  # a subdirectory, or not a checkout: not cached, scanned every time
    common = admin
    commondir = admin / "commondir"
    located = _signature(commondir)
    if commondir.is_file():
        try:
            common = (admin / os.fsdecode(fs.read_file(commondir)).strip()).resolve()
        except OSError:
            return []
    files = [admin / "config.worktree", common / "config", common / "config.worktree"]
    if dotgit == _signature(cwd / ".git") and located == _signature(commondir):
        with _cache_lock:
            _bounded_put(_located, str(cwd), (dotgit, admin, located, files))
    return files


def _signature(path: Path) -> object:
    """What changes when *path* is replaced or rewritten (None when it is missing)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)


def _stat_key(paths: Sequence[Path]) -> tuple[object, ...]:
    key: list[object] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            key.append((str(path), None))
        else:
            key.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def _content_key(paths: Sequence[Path]) -> tuple[object, ...] | None:
    """The bytes of *paths* (by role, not by name); None when they include other files.

    Worktrees of one repository read the same files (the admin dir's ``config.worktree`` is
    usually absent), so one scan answers for all of them. Not with ``include``/``includeIf``:
    a condition (``onbranch:``) answers differently per worktree, and an included file can
    change without these changing.
    """
    contents: list[object] = []
    for path in paths:
        try:
            data = fs.read_file(path)
        except FileNotFoundError:
            data = None
        except OSError:
            return None
        if data is not None and b"include" in data.lower():
            return None
        contents.append(data)
    return ("content", *contents)


def _repository_exec_settings(cwd: Path, files: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """Overrides for program-running settings that the repository's own config defines.

    *files* are the repository-level config files of *cwd* (:func:`_config_files`).
    """
    key = (str(cwd), _stat_key(files)) if files else None
    if key is None:
        return _scan_repository_config(cwd)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache[key] = _cache.pop(key)  # the newest again
    if cached is not None:
        return cached
    shared = _content_key(files)
    if shared is None:
        # Config that includes other files is read for every command: an included file can
        # change (or a condition answer differently) while the including files stay as they are.
        return _scan_repository_config(cwd)
    with _cache_lock:
        result = _cache.get(shared)
        if result is not None:
            _cache[shared] = _cache.pop(shared)  # shared by every worktree: kept the newest
    if result is None:
        result = _scan_repository_config(cwd)
        # Cached only when the files did not change while git read them.
        if _stat_key(files) != key[1] or _content_key(files) != shared:
            return result
    with _cache_lock:
        _bounded_put(_cache, key, result)
        _bounded_put(_cache, shared, result)
    return result


def _scan_repository_config(cwd: Path) -> tuple[tuple[str, str], ...]:
    # `git config` only reads files: it runs no hook, fsmonitor or driver.
    out = _execute(cwd, ["config", "--list", "--show-scope", "--name-only", "-z"], check=False)
    found: dict[str, str] = {}
    fields = out.stdout.split("\0")
    # With -z each entry is "scope NUL name NUL".
    for scope, name in zip(fields[0::2], fields[1::2], strict=False):
        if scope not in _UNTRUSTED_SCOPES:
            continue
        lowered = name.lower()
        if lowered in _EXEC_KEYS:
            found[name] = _EXEC_KEYS[lowered]
            continue
        section, _, rest = name.partition(".")
        driver, _, leaf = rest.rpartition(".")
        if section.lower() == "remote" and leaf.lower() in _PACK_KEYS:
            found[f"remote.{driver}.{leaf.lower()}"] = _PACK_KEYS[leaf.lower()]
            continue
        keys = _DRIVER_KEYS.get(section.lower())
        if keys is not None and driver and leaf.lower() in keys:
            for neutral_leaf, value in keys.items():
                found[f"{section}.{driver}.{neutral_leaf}"] = value
    return tuple(sorted(found.items()))


def _execute(
    cwd: Path,
    args: Sequence[str],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    shown_from: int = 0,
) -> subprocess.CompletedProcess[str]:
    raw = _execute_bytes(
        cwd,
        args,
        check=check,
        env=env,
        input_bytes=input_bytes,
        shown_from=shown_from,
    )
    return subprocess.CompletedProcess(
        raw.args,
        raw.returncode,
        raw.stdout.decode("utf-8", errors="replace"),
        raw.stderr.decode("utf-8", errors="replace"),
    )


def _execute_bytes(
    cwd: Path,
    args: Sequence[str],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    shown_from: int = 0,
    stdout: IO[bytes] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    shown = ["git", *args[shown_from:]]
    stdin = subprocess.DEVNULL if input_bytes is None else subprocess.PIPE
    proc = _start(cwd, args, env=env, stdin=stdin, stderr=subprocess.PIPE, stdout=stdout)
    # Git never waits on a named pipe of its own: one it waits on was planted where it reads
    # (an agent's `.gitignore` or loose ref), and would hold it, and whatever waits for it,
    # for ever. The watch stops it; the command fails and says where the pipe is.
    with proc, pipes.watching(proc) as watched:
        try:
            out, err = proc.communicate(input_bytes)
        except BaseException:
            proc.kill()
            raise
    if watched.pipe is not None:
        raise StuckOnPipeError(shown, watched.pipe)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out or b"", err)
    if check and done.returncode != 0:
        text = (done.stdout + done.stderr).decode("utf-8", errors="replace")
        raise CommandError(shown, done.returncode, text, full=_out_of_space(cwd, text))
    return done


# Waits between starts of git refused for want of a process (EAGAIN): 1.5 s in all.
_START_BACKOFF = (0.1, 0.2, 0.4, 0.8)


def _start(
    cwd: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    stdin: int,
    stderr: int,
    stdout: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``git *args`` (already hardened) in *cwd*, its output piped (or into *stdout*).

    GitError when *cwd* is not a directory, BadInputError when git is missing.
    """
    if not cwd.is_dir():
        raise GitError(f"directory {cwd} does not exist")
    full_env = clean_env({**_GIT_ENV, **(env or {})})
    for name in _GIT_ENV_DROPPED:
        full_env.pop(name, None)
    argv = [_program(full_env.get("PATH")), *[str(a) for a in args]]
    delays = iter(_START_BACKOFF)
    while True:
        try:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout is None else stdout,
                stderr=stderr,
            )
        except FileNotFoundError as exc:
            if not cwd.is_dir():  # removed since the check above
                raise GitError(f"directory {cwd} does not exist") from exc
            msg = "git is not installed or not on PATH; install git >= 2.38"
            raise BadInputError(msg) from exc
        except OSError as exc:
            limit = system_limit(exc.errno)
            if limit is None:
                raise
            # EAGAIN (`ulimit -u`) passes as other processes of the user's end.
            delay = next(delays, None) if exc.errno == errno.EAGAIN else None
            if delay is None:
                raise GitStartError(
                    f"git could not start ({exc.strerror}): the system refused ({limit})"
                ) from exc
            time.sleep(delay)


class StuckOnPipeError(GitError):
    """A git command stopped because it waited on a named pipe where git reads a file."""

    def __init__(self, shown: Sequence[str], pipe: str) -> None:
        """*shown*: the command as asked; *pipe*: the FIFO's path, or ``a named pipe``."""
        self.pipe = pipe
        at = _subcommand(shown[1:])
        command = "git" if at is None else f"git {shown[1 + at]}"
        what = f"the named pipe {pipe}" if pipe.startswith("/") else pipe
        super().__init__(
            f"`{command}` was stopped: it waited on {what}, where git reads a file "
            "(remove it, then try again)"
        )


# What git says when a write fails; of a full disk it says so only sometimes (a checkout
# says "error: unable to write file PATH", nothing more).
_WRITE_FAILED = ("unable to write", "could not write", "write error", "unable to create")


def _out_of_space(cwd: Path, text: str) -> bool:
    """Whether git, failing with *text* in *cwd*, failed to write for want of space there."""
    low = text.lower()
    return any(words in low for words in _WRITE_FAILED) and fs.nearly_full(cwd)


@functools.lru_cache(maxsize=8)
def _program(path: str | None) -> str:
    """Where git is on *path* (a PATH value), looked up once per value.

    Given ``git``, every start would try each directory of PATH before git's (an ``execve``
    that fails in each). Not found: ``git``, and starting it says git is missing.
    """
    return shutil.which("git", path=os.defpath if path is None else path) or "git"


def _hardened(
    cwd: Path, args: Sequence[str], env: Mapping[str, str] | None
) -> tuple[list[str], int, dict[str, str]]:
    """The argv to run, where the command as asked starts in it (for error messages), the env."""
    at = _subcommand(args)
    if at is not None:
        added = []
        # An empty diff.external breaks `git diff`, so the external diff is refused per command.
        if args[at] in _PATCH_COMMANDS:  # and no colour, whatever color.diff says
            added += ["--no-ext-diff", "--no-textconv", "--no-color"]
        # Looking inside a populated submodule (or a repository an agent made and added) starts
        # git there, under that repository's own config, which these overrides do not cover.
        if args[at] in _WORKTREE_COMMANDS:
            added.append("--ignore-submodules=dirty")
        if args[at] in _PACK_OPTIONS:
            leaf, option = _PACK_OPTIONS[args[at]]
            if leaf in _planted_packs(cwd):
                added.append(f"{option}={_PACK_KEYS[leaf]}")
        args = [*args[: at + 1], *added, *args[at + 1 :]]
    prefix, values = overrides(cwd)
    if at is not None and args[at] in _LINE_DIFF_COMMANDS:
        prefix = [*prefix, "-c", f"core.bigFileThreshold={BIG_FILE}"]
    return [*prefix, *args], len(prefix), {**(env or {}), **values}


def _subcommand(args: Sequence[str]) -> int | None:
    """Where git's command is in *args* (after options such as ``-c KEY=VALUE``)."""
    i = 0
    while i < len(args):
        if args[i] in {"-c", "-C"}:
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return i
    return None


# git's core.bigFileThreshold (512m by default) for swarm's diffs, logs and stats: a file past
# it is binary to them, never loaded to count or show its lines. An agent's sparse or
# repetitive file of gigabytes costs it no disk and its branch a few KiB, while `diff
# --numstat` of a 500 MB text file held 11 GB (up to 8 run at once). Not for merges, packs or
# pushes: those keep git's own threshold (deltas of big files, line merges).
BIG_FILE = "16m"
_PATCH_COMMANDS = frozenset({"diff", "log", "show"})
_LINE_DIFF_COMMANDS = frozenset({*_PATCH_COMMANDS, "diff-tree"})
_WORKTREE_COMMANDS = frozenset({"status", "diff"})


def run(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git *args`` in *cwd*, hardened, with stdout/stderr as text.

    Raises CommandError when *check* and git exits non-zero, GitError when *cwd* is unusable,
    BadInputError when git is missing.
    """
    data = None if input_text is None else as_bytes(input_text)
    argv, shown_from, full_env = _hardened(cwd, args, env)
    return _execute(
        cwd,
        argv,
        check=check,
        env=full_env,
        input_bytes=data,
        shown_from=shown_from,
    )


def run_names(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Like :func:`run`, its output read as file names are (:func:`os.fsdecode`).

    For output that names files (``-z`` listings, ``add --verbose``): each name keeps its
    bytes, so it opens its file and goes back to git as it came, in any locale (read as UTF-8,
    a name Latin-1 cannot spell, ``文档.md``, named no file there). Show one with
    :func:`core.text.path_text`.
    """
    data = None if input_text is None else as_bytes(input_text)
    res = run_bytes(cwd, *args, check=check, env=env, input_bytes=data)
    return subprocess.CompletedProcess(
        res.args, res.returncode, os.fsdecode(res.stdout), os.fsdecode(res.stderr)
    )


def as_bytes(text: str) -> bytes:
    """*text* (a file name as :func:`run_names` reads it, or swarm's own) as git gets it.

    A name keeps its bytes (:func:`os.fsencode`); text the locale's encoding cannot spell
    never came from a file name, and goes as UTF-8 (surrogates as the bytes they hold).
    """
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def run_bytes(
    cwd: Path,
    *args: str,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Like :func:`run`, with stdout and stderr as bytes (blobs, -z listings of odd names)."""
    argv, shown_from, full_env = _hardened(cwd, args, env)
    return _execute_bytes(
        cwd, argv, check=check, env=full_env, input_bytes=input_bytes, shown_from=shown_from
    )


def run_into(cwd: Path, out: IO[bytes], *args: str, input_text: str | None = None) -> None:
    """Like :func:`run` (checked), with git's stdout written to *out* (a pack of any size)."""
    data = None if input_text is None else as_bytes(input_text)
    argv, shown_from, full_env = _hardened(cwd, args, None)
    _execute_bytes(
        cwd, argv, check=True, env=full_env, input_bytes=data, shown_from=shown_from, stdout=out
    )


class ObjectReader:
    """Reads objects through one persistent ``git cat-file --batch``, thread-safe.

    Started like every command (hardened, git's location variables dropped) and watched like
    one while a read waits: an object planted as a named pipe stops the reader and raises
    StuckOnPipeError (the next read starts it again) instead of holding its caller for ever.
    """

    def __init__(self, cwd: Path) -> None:
        if not cwd.is_dir():
            raise GitError(f"directory {cwd} does not exist")
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def read(self, rev: str, *, limit: int | None = None) -> bytes:
        """The raw content of object *rev* (its first *limit* bytes); GitError when missing.

        The rest of a bigger object is read and dropped as it comes, never held.
        """
        if not rev or "\n" in rev:
            raise GitError(f"object {rev!r} is missing")
        with self._lock:
            proc = self._proc or self._start()
            with pipes.watching(proc) as watched:
                answered, data = _batch_read(proc, rev, limit)
            if watched.pipe is not None or not answered:
                self._stop()
                if watched.pipe is not None:
                    raise StuckOnPipeError(["git", "cat-file"], watched.pipe)
                raise GitError(f"`git cat-file` ended while reading object {rev} in {self._cwd}")
        if data is None:
            raise GitError(f"object {rev} is missing")
        return data

    def _start(self) -> subprocess.Popen[bytes]:
        argv, _, env = _hardened(self._cwd, ["cat-file", "--batch"], None)
        self._proc = _start(
            self._cwd, argv, env=env, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        return self._proc

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with proc:  # closes its pipes
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # cat-file ends at the end of its input
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the persistent process."""
        with self._lock:
            self._stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


_DROP_CHUNK = 1 << 20  # what of an object past its limit is read at once, to be dropped


def _batch_read(
    proc: subprocess.Popen[bytes], rev: str, limit: int | None = None
) -> tuple[bool, bytes | None]:
    """Ask ``cat-file --batch`` *proc* for *rev*: whether it answered, and the object.

    At most its first *limit* bytes are kept. The object is None when missing; there is no
    answer when the process ended (stopped, or it failed) first.
    """
    if proc.stdin is None or proc.stdout is None:  # never: it is started with both
        return False, None
    try:
        proc.stdin.write(rev.encode() + b"\n")
        proc.stdin.flush()
        header = proc.stdout.readline()
        size_text = header.rstrip(b"\n").rpartition(b" ")[2]  # "<name> <type> <size>"
        if not header or not size_text.isdigit():  # "<rev> missing", "<rev> ambiguous"
            return bool(header), None
        size = int(size_text)
        keep = size if limit is None else min(size, limit)
        data = proc.stdout.read(keep)
        left = size + 1 - keep  # the rest of the object, then a newline
        while left > 0 and len(data) == keep:
            dropped = len(proc.stdout.read(min(left, _DROP_CHUNK)))
            if not dropped:
                return False, None
            left -= dropped
    except OSError:  # its input closed: it ended
        return False, None
    if len(data) != keep:
        return False, None
    return True, data

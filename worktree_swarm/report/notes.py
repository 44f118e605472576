"""The shared findings file of a run: agents append what they learn so others need not re-learn it.

The file is ``<state dir>/runs/<run>/findings.md``; the runner gives its path to every agent as
``SWARM_CONTEXT``. Each entry goes out in one ``write`` to the file opened ``O_APPEND``, which
Linux makes atomic against every other appending writer: concurrent writers never interleave,
and no lock is taken that an agent could hold to silence the others. Each entry is one
Markdown list item; continuation lines are indented, so an entry can never pose as another.
The run creates the file with its header before any agent starts (:func:`prepare`).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from worktree_swarm.core import paths
from worktree_swarm.core.errors import BadInputError, SwarmError
from worktree_swarm.core.task import is_valid_task_id
from worktree_swarm.core.text import printable, without_escapes
from worktree_swarm.core.words import FINDINGS_HEADING
from worktree_swarm.git import repo as git
from worktree_swarm.infra import fs, lock
from worktree_swarm.infra.redact import redact
from worktree_swarm.infra.store import Store

FILE_NAME = "findings.md"
CONTEXT_ENV = "SWARM_CONTEXT"
TASK_ENV = "SWARM_TASK_ID"
USER_TAG = "(user)"
MAX_NOTE_CHARS = 8000
# An entry's bytes: at most 4 per character, 3 more per continuation line (at most one per
# character), its stamp and tag; one write of it is one append, whole or cut short.
MAX_ENTRY_BYTES = 1 << 16
# `swarm notes` shows the end of a file bigger than this (agents can write it directly).
MAX_SHOWN_BYTES = 1 << 20


def findings_path(repo: git.Repo, run_id: str) -> Path:
    """The findings file of *run_id* (it may not exist yet)."""
    return paths.run_dir(repo, run_id) / FILE_NAME


def findings_instructions(path: str) -> str:
    """Return the paragraph appended to every agent prompt about the shared findings file."""
    return (
        f"\n\n{FINDINGS_HEADING}\n"
        "Other agents are working on related tasks at the same time, each in its own worktree."
        f" What they found out is in {path} (also in $SWARM_CONTEXT): read it before you"
        " start and again when you are stuck. When you learn something another agent would"
        " need (a build or test quirk, where something lives, a decision about a shared"
        ' interface), add it with `swarm note "one short fact"`; it is appended with your'
        " task id. Do not edit the file directly.\n"
    )


def resolve_target(
    *, environ: Mapping[str, str] | None = None, repo_dir: Path | None = None
) -> tuple[Path, str]:
    """Return (findings file, tag) for `swarm note`.

    Inside an agent: ``SWARM_CONTEXT`` and ``SWARM_TASK_ID``. Outside one: the latest run of
    the repository containing *repo_dir*, tagged as written by the user.
    """
    env = os.environ if environ is None else environ
    context = env.get(CONTEXT_ENV, "")
    task_id = env.get(TASK_ENV, "")
    if task_id and not is_valid_task_id(task_id):
        raise BadInputError(f"{TASK_ENV}: {task_id[:64]!r} is not a valid task id")
    if context:
        path = Path(context)
        if not path.is_absolute() or path.name != FILE_NAME:
            raise BadInputError(f"{CONTEXT_ENV}: expected an absolute path to a {FILE_NAME} file")
        if not path.parent.is_dir():
            # The run's directory is made before any agent starts: a stale variable.
            raise BadInputError(
                f"{CONTEXT_ENV}: {printable(str(path.parent))} does not exist; is that run gone?"
            )
        return path, task_id or USER_TAG
    return latest_findings(repo_dir or Path.cwd()), task_id or USER_TAG


def notes_path(
    *, run_id: str | None, repo_dir: Path, environ: Mapping[str, str] | None = None
) -> Path:
    """The file `swarm notes` shows: *run_id*'s, else ``SWARM_CONTEXT``, else the latest run's."""
    env = os.environ if environ is None else environ
    if run_id is None and env.get(CONTEXT_ENV):
        return resolve_target(environ=env, repo_dir=repo_dir)[0]
    return latest_findings(repo_dir, run_id)


def latest_findings(repo_dir: Path, run_id: str | None = None) -> Path:
    """The findings file of *run_id* (default: the latest run) of the repository at *repo_dir*."""
    git.require_git()
    repo = git.open_repo(repo_dir, empty_ok=True)
    db = repo.state_dir / "state.db"
    lock.refuse_while_state_is_gone(repo.state_dir, db)
    if not db.exists():
        raise BadInputError(f"no swarm runs in {repo.root} yet; start one with `swarm run`")
    with Store.to_read(db) as store:  # a look: on a full disk, as last written
        if run_id is None:
            run_id = store.latest_run_id()
            if run_id is None:
                raise BadInputError("no swarm runs recorded yet; start one with `swarm run`")
        elif store.get_run(run_id) is None:
            raise BadInputError(f"unknown run {run_id!r}; `swarm runs` lists the recorded runs")
    return findings_path(repo, run_id)


def prepare(path: Path, *, run_id: str | None = None) -> None:
    """Create the findings file *path* with its header unless it exists (before agents start).

    *run_id* names the run in the header (default: the name of *path*'s directory).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        _create(path, _header(path, run_id).encode("utf-8"))


def append_note(path: Path, text: str, *, tag: str, now: float | None = None) -> str:
    """Append a timestamped entry tagged *tag* to *path* and return the entry as written.

    The whole entry goes out in one ``O_APPEND`` write, so concurrent writers never tear or
    lose an entry; a file that does not exist yet is created with its header (nobody ever
    sees it without). *path* is never followed as a symlink nor waited on as a FIFO.
    """
    # Run inside an agent, whose environment holds the secrets the redactor knows.
    lines = [_clean(line) for line in redact(text).strip().splitlines()]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise BadInputError("the note is empty; write what you found, e.g. swarm note 'TEXT'")
    if sum(len(line) for line in lines) > MAX_NOTE_CHARS:
        raise BadInputError(
            f"the note is longer than {MAX_NOTE_CHARS} characters; keep notes to short facts"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
    entry = "\n".join([f"- {stamp} [{tag}] {lines[0]}", *(f"  {line}" for line in lines[1:])])
    entry += "\n"
    data = entry.encode("utf-8")
    if len(data) > MAX_ENTRY_BYTES:  # cannot happen within MAX_NOTE_CHARS
        raise BadInputError(f"the note is longer than {MAX_ENTRY_BYTES} bytes; keep it short")
    try:
        try:
            _append(path, data)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not _create(path, _header(path).encode("utf-8") + data):
                _append(path, data)  # another writer made it meanwhile
    except OSError as exc:
        raise SwarmError(f"{path}: cannot append the note: {exc.strerror or exc}") from exc
    return entry


def start_copy(copy: Path, text: str, *, run_id: str) -> int:
    """Make *copy* (the findings file of an agent on another machine) hold *text*.

    *text*: the run's findings as :func:`read_notes` gives them ("" for its header alone).
    Written aside and renamed into place, over whatever is there. Returns its size: where
    what that agent adds starts (:func:`added_since`).
    """
    data = (text or _header(copy, run_id)).encode("utf-8")
    copy.parent.mkdir(parents=True, exist_ok=True)
    fd, aside = tempfile.mkstemp(prefix=f".{copy.name}.", dir=copy.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        Path(aside).replace(copy)
    except BaseException:
        Path(aside).unlink(missing_ok=True)
        raise
    return len(data)


def added_since(copy: Path, offset: int) -> tuple[str, int]:
    """What the findings file *copy* gained past *offset*, and where it ends now.

    At most the last :data:`MAX_SHOWN_BYTES` of it, from a whole line; "" when it is gone,
    shorter than *offset* or not a regular file (its agent made it so).
    """
    try:
        with os.fdopen(_open(copy, os.O_RDONLY), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= offset:
                return "", size
            start = max(offset, size - MAX_SHOWN_BYTES)
            fh.seek(start)
            data = fh.read(size - start)
    except (OSError, SwarmError):
        return "", offset
    if start > offset:
        data = data.partition(b"\n")[2]
    return data.decode("utf-8", errors="replace"), size


def merge_in(path: Path, text: str) -> None:
    """Append *text*, what another copy of the findings file gained, to *path* in one write.

    Without terminal escapes, made printable and redacted; it starts on a line of its own.
    A file not there yet is made with its header. OSError when nothing could be written (a
    full disk: the caller may wait and try again).
    """
    lines = [_clean(line) for line in redact(without_escapes(text)).split("\n")]
    data = "\n".join(lines).strip("\n").encode("utf-8")
    if not data.strip():
        return
    data += b"\n"
    try:
        _append(path, data)
    except FileNotFoundError:
        if not _create(path, _header(path).encode("utf-8") + data):
            _append(path, data)


def read_notes(path: Path) -> str:
    """Return the findings file's text with terminal control characters neutralised.

    "" when it does not exist or holds its header alone. Of a file over
    :data:`MAX_SHOWN_BYTES` (an agent can write it directly), its last whole lines within
    that, after a line saying how much is not shown.
    """
    skipped = 0
    try:
        with os.fdopen(_open(path, os.O_RDONLY), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_SHOWN_BYTES:  # its end, from the first whole line
                fh.seek(size - MAX_SHOWN_BYTES)
                head, _, rest = fh.read(MAX_SHOWN_BYTES).partition(b"\n")
                skipped = size - MAX_SHOWN_BYTES + len(head) + 1
                data = rest
            else:
                data = fh.read()
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SwarmError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    text = data.decode("utf-8", errors="replace")
    if text == _header(path):
        return ""
    if skipped:
        where = printable(str(path))
        text = f"[{skipped} bytes before these not shown: the whole file is {where}]\n{text}"
    # Agents can write the file directly; escape sequences must not reach the user's terminal.
    return redact("\n".join(_clean(line) for line in text.split("\n")))


def _create(path: Path, data: bytes) -> bool:
    """Make *path* holding *data* unless something is there already; whether this call did.

    Written aside and linked into place, so the file never exists without its header.
    """
    fd, aside = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            os.fchmod(fd, 0o666 & ~fs.umask())  # as a plain `open` would: not 0600
            _write_once(path, fd, data)
        finally:
            os.close(fd)
        try:
            os.link(aside, path)  # fails on any name there: file, symlink, FIFO, directory
        except FileExistsError:
            return False
        return True
    finally:
        Path(aside).unlink()


def _append(path: Path, data: bytes) -> None:
    fd = _open(path, os.O_RDWR | os.O_APPEND)
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":  # a line written straight in, left open
            data = b"\n" + data
        _write_once(path, fd, data)
    finally:
        os.close(fd)


def _write_once(path: Path, fd: int, data: bytes) -> None:
    # Never a second write: the rest could land after another writer's entry.
    written = os.write(fd, data)
    if written != len(data):
        raise SwarmError(
            f"{path}: only {written} of {len(data)} bytes of the note were written"
            " (is the disk full?); the file ends in a cut entry"
        )


def _open(path: Path, flags: int) -> int:
    """Open *path* if it is a regular file: never a symlink's target, never waiting on a FIFO."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        # A symlink; a FIFO or socket without a reader; a directory opened to write.
        if exc.errno in {errno.ELOOP, errno.ENXIO, errno.EISDIR}:
            raise _not_regular(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_regular(path)
    return fd


def _not_regular(path: Path) -> SwarmError:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = 0
    kind = (
        "a symbolic link" if stat.S_ISLNK(mode)
        else "a FIFO" if stat.S_ISFIFO(mode)
        else "a directory" if stat.S_ISDIR(mode)
        else "not a regular file"
    )  # fmt: skip
    return SwarmError(
        f"{printable(str(path))} is {kind}: swarm reads and appends to a regular file only;"
        " remove it (a note then makes a new one)"
    )


def _header(path: Path, run_id: str | None = None) -> str:
    run_id = run_id or path.parent.name
    return (
        f"# Findings of run {run_id}\n\n"
        "Facts the agents of this run found out, shared so that nobody has to find them twice."
        '\nAdd one with `swarm note "TEXT"`.\n\n'
    )


def _clean(line: str) -> str:
    return printable(line.replace("\n", " ")).rstrip()  # C1 controls and bidi overrides too

"""What a worktree's index holds changed from HEAD, and unstaging what swarm never commits.

Files over max_file, under a filter swarm's git does not run, or holding a secret value go
back into the index as HEAD has them; changed files under such a filter are found before the
`add` (:func:`filtered_on_disk`), to be left out of it: never hashed into an object.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path

from worktree_swarm.core.errors import GitError
from worktree_swarm.core.text import path_text
from worktree_swarm.core.units import format_size
from worktree_swarm.git import runner
from worktree_swarm.git.config_files import git_dir
from worktree_swarm.git.config_overrides import neutral_filters
from worktree_swarm.git.object_reader import ObjectReader
from worktree_swarm.git.repo import blob_sizes, in_batches
from worktree_swarm.infra import fs, redact


def unstage_over(
    worktree: Path, added: str, limit: int | None, *, env: Mapping[str, str] | None = None
) -> list[str]:
    """Unstage the files `add --verbose` staged (its output *added*) whose blobs pass *limit*.

    Each goes back into the index (*env*: another index file) as HEAD has it. Returns them,
    each with its size. The files `add` names are lstat'ed first: no git runs unless one is
    bigger, or a name could not be read back (a newline in it, bytes not UTF-8); then the
    staged blobs are sized (a clean filter's blob may be smaller than its file).
    """
    if limit is None:
        return []
    big, unsure = _big_added(worktree, added, limit)
    if not (big or unsure):
        return []  # the usual case
    staged = [
        (p, blob)
        for p, mode, blob in staged_entries(worktree, env=env)
        if _has_blob(mode, blob) and (unsure or p in big)
    ]
    sizes = blob_sizes(worktree, [blob for _, blob in staged], env=env)
    over = [(p, size) for (p, _), size in zip(staged, sizes, strict=True) if size > limit]
    for literal in in_batches(f":(literal,top){path}" for path, _ in over):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return [f"{path_text(path)} ({format_size(size)})" for path, size in over]


def unstage_filtered(
    worktree: Path, *, env: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """Unstage the changed files whose ``filter`` attribute names a driver git does not run.

    swarm's git switches off the filters the repository's own config defines (an agent can
    write that config): staged without its clean filter, a git-crypt file would be committed
    in the clear. Each goes back into the index (*env*: another index file) as HEAD has it;
    returns them, each with its filter (path, driver). No git runs unless the config defines
    a filter.
    """
    drivers = neutral_filters(worktree)
    if not drivers:
        return []
    staged = [p for p, mode, blob in staged_entries(worktree, env=env) if _has_blob(mode, blob)]
    over = filtered(worktree, staged, drivers, env=env)
    for literal in in_batches(f":(literal,top){path}" for path, _ in over):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return over


def filtered_on_disk(
    cwd: Path,
    work_tree: Path,
    *,
    base: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    drivers: AbstractSet[str] | None = None,
) -> list[tuple[str, str]]:
    """The files an ``add --all`` would hash whose filter swarm's git never runs; each with it.

    Changed from the index or untracked (not ignored), and on disk under *work_tree*: left
    out of the `add` itself (``:(exclude)``), a decrypted git-crypt file is hashed into no
    object of the repository's, not even one no commit holds (until `git gc`). No git runs
    unless the repository's config defines a filter. *base*: git's arguments before the
    command (a rescue's ``--git-dir``), *env*: its environment (another index file);
    *drivers*: the filters looked for (None: those the repository's config defines now).
    """
    drivers = neutral_filters(cwd) if drivers is None else drivers
    if not drivers:
        return []
    args = ("ls-files", "-z", "--modified", "--others", "--exclude-standard")
    listed = runner.run_bytes(cwd, *base, *args, env=env).stdout.split(b"\0")
    # Not a repository (`dir/`, a gitlink), nor a deletion: those are staged as they are.
    names = sorted({os.fsdecode(n) for n in listed if n and not n.endswith(b"/")})
    return filtered(cwd, [n for n in names if _on_disk(work_tree / n)], drivers, base=base, env=env)


def disk_blobs(
    cwd: Path,
    work_tree: Path,
    names: Sequence[str],
    *,
    base: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The object id each of *names* under *work_tree* is as it is on disk, written nowhere.

    Regular files only, whose name holds no newline (`hash-object` reads a name a line): any
    other is left out, for the caller to take as changed. *base*, *env*: as for
    :func:`filtered_on_disk`.
    """
    regular = [name for name in names if "\n" not in name and _regular(work_tree / name)]
    if not regular:
        return {}
    listed = "".join(f"{name}\n" for name in regular)
    out = runner.run(cwd, *base, "hash-object", "--stdin-paths", env=env, input_text=listed)
    return dict(zip(regular, out.stdout.split(), strict=True))


def _regular(path: Path) -> bool:
    """Whether *path* is a regular file (not followed, were it a link)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _on_disk(path: Path) -> bool:
    """Whether *path* is there, and not a directory."""
    try:
        return not stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def filtered(
    cwd: Path,
    names: Sequence[str],
    drivers: AbstractSet[str],
    *,
    base: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[tuple[str, str]]:
    """Those of *names* whose ``filter`` attribute is one of *drivers*, each with it."""
    if not names:
        return []
    listed = b"".join(os.fsencode(p) + b"\0" for p in names)
    fields = runner.run_bytes(
        cwd, *base, "check-attr", "-z", "--stdin", "filter", input_bytes=listed, env=env
    ).stdout.split(b"\0")
    return [
        (os.fsdecode(name), os.fsdecode(value))
        for name, _, value in zip(fields[0::3], fields[1::3], fields[2::3], strict=False)
        if os.fsdecode(value) in drivers
    ]


def _big_added(worktree: Path, added: str, limit: int) -> tuple[set[str], bool]:
    """The files *added* names bigger than *limit* on disk; whether a name could not be read."""
    big: set[str] = set()
    for line in added.splitlines():
        if line.startswith("remove '") and line.endswith("'"):
            continue
        if not (line.startswith("add '") and line.endswith("'")):
            return big, True  # part of a name with a newline
        try:
            info = (worktree / line[5:-1]).lstat()
        except OSError:
            return big, True  # not as printed: bytes not UTF-8
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            big.add(line[5:-1])
    return big, False


def staged_entries(
    worktree: Path,
    *,
    env: Mapping[str, str] | None = None,
    base: Sequence[str] = (),
    against: str | None = None,
) -> list[tuple[str, str, str]]:
    """(path, mode, blob) of each path *worktree*'s index holds changed from HEAD, not deleted.

    Listed by git NUL-separated (a name is as it is, bytes included); *env*: another index;
    *base*: git's arguments before the command (a rescue's ``--git-dir``); *against*: the
    commit compared with, not HEAD.
    """
    staged = runner.run_bytes(
        worktree, *base, "diff", "--cached", "--raw", "--no-abbrev", "-z", "--no-renames",
        "--diff-filter=d", *([against, "--"] if against else []), env=env,
    ).stdout.split(b"\0")  # fmt: skip
    entries = []
    for meta, name in zip(staged[0::2], staged[1::2], strict=False):
        _, mode, _, blob, _ = meta.decode("ascii").split()  # ":mode mode id id status"
        entries.append((os.fsdecode(name), mode, blob))
    return entries


def named_blobs(
    worktree: Path,
    *,
    env: Mapping[str, str] | None = None,
    base: Sequence[str] = (),
    against: str | None = None,
) -> set[str]:
    """The blobs of :func:`staged_entries`: what a commit of the index takes that may be new.

    What moves in from a store of its own (``quarantine``) once something was left out.
    """
    return {blob for *_, blob in staged_entries(worktree, env=env, base=base, against=against)}


def _has_blob(mode: str, blob: str) -> bool:
    """Whether an index entry holds a blob: not a gitlink (a commit id), nor unmerged (zeros)."""
    return mode != "160000" and bool(blob.strip("0"))


_SECRET_SCAN_LIMIT = 8 * 2**20  # a file's first bytes: what holds a key is small


def unstage_secrets(worktree: Path, *, env: Mapping[str, str] | None = None) -> list[str]:
    """Put the files :func:`holding_secrets` finds back as HEAD has them in the index; them.

    Never in one of swarm's commits, nor in a push (*env*: as for :func:`holding_secrets`).
    Nor are the files an earlier checkpoint of *worktree* left out so, unchanged since: noted
    in its git dir (:data:`SECRETS_LEFT_OUT`), they stay out of a later checkpoint run where
    the secret is not known (`swarm clean` from a shell without the variable).
    """
    found = _secret_entries(worktree, env=env)
    note = _left_out_note(worktree)
    noted = _read_note(note)
    if noted:
        again = [
            (path, blob)
            for path, _, blob in staged_entries(worktree, env=env)
            if _digest(path, blob) in noted
        ]
        found = list(dict.fromkeys([*found, *again]))
    if found and note is not None:
        _write_note(note, noted | {_digest(path, blob) for path, blob in found})
    secret = list(dict.fromkeys(path for path, _ in found))
    for literal in in_batches(f":(literal,top){path}" for path in secret):
        runner.run(worktree, "reset", "-q", "HEAD", "--", *literal, env=env)
    return secret


# In a worktree's git dir: the files a checkpoint left out for a secret, each as a digest of
# its name and staged blob (never the name, which may be the secret itself).
SECRETS_LEFT_OUT = "swarm-secrets-left-out"
_NOTE_LIMIT = 1 << 20


def _digest(path: str, blob: str) -> str:
    return hashlib.sha256(os.fsencode(path) + b"\0" + blob.encode("ascii")).hexdigest()


def _left_out_note(worktree: Path) -> Path | None:
    try:
        return git_dir(worktree) / SECRETS_LEFT_OUT
    except (GitError, OSError):
        return None


def keep_note(note: Path, kept: Path) -> bool:
    """Add what the note *note* holds to *kept* (made when missing; nothing when it is empty).

    Before git prunes a worktree whose ``.git`` file is gone, its admin dir (and the note in
    it) goes: the files the worktree still holds are saved later, where the note is *kept*.
    False when it could not be kept (a full disk): the worktree must not be pruned yet.
    """
    noted = _read_note(note)
    if not noted or noted <= _read_note(kept):
        return True
    with contextlib.suppress(OSError):
        kept.parent.mkdir(parents=True, exist_ok=True)
    return _write_note(kept, noted | _read_note(kept))


def _read_note(note: Path | None) -> set[str]:
    """The digests *note* holds (none when it is missing, unreadable or not a plain file)."""
    if note is None:
        return set()
    try:
        with fs.open_file(note, follow=False) as fh:
            return set(fh.read(_NOTE_LIMIT).decode("ascii", "replace").split())
    except OSError:
        return set()


def _write_note(note: Path, digests: AbstractSet[str]) -> bool:
    """Write *digests* to *note*, aside and renamed into place (never through a link).

    False when it could not be written (a full disk): the value is looked for still.
    """
    try:
        fd, aside = tempfile.mkstemp(prefix=f".{note.name}.", dir=note.parent)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write("".join(f"{d}\n" for d in sorted(digests)))
            Path(aside).replace(note)
        except BaseException:
            Path(aside).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True


def holding_secrets(
    worktree: Path,
    *,
    env: Mapping[str, str] | None = None,
    base: Sequence[str] = (),
    against: str | None = None,
    note: Path | None = None,
) -> list[str]:
    """The files staged in *worktree* whose content or name holds a secret value swarm knows.

    Also those a checkpoint left out for a secret, noted in *note* (:data:`SECRETS_LEFT_OUT`
    of the worktree's git dir) and unchanged since: where the value is not known (a rescue
    from a shell without the variable), they stay out all the same.

    *env*: git's environment (``GIT_INDEX_FILE`` for an index of the caller's own, a
    checkpoint's own object store); *base*: git's arguments before the command (a rescue's
    ``--git-dir``, git run in a checkout of the repository); *against*: the commit the
    files are new or changed from, and last committed in (None: HEAD).

    The values the redactor knows: of secret environment variables (an agent that dumped its
    environment into a file) and of the task's ``copy`` files. Every file the index holds
    changed from HEAD: what the checkpoint staged and what the agent staged itself, read as
    staged (the blob a commit would hold: a link's target, a file as a `working-tree-encoding`
    converted it), and listed by git NUL-separated (`add --verbose` prints a name as it is,
    and a newline in one made it two lines, neither read).
    """
    found = [path for path, _ in _secret_entries(worktree, env=env, base=base, against=against)]
    noted = _read_note(note)
    if noted:
        entries = staged_entries(worktree, env=env, base=base, against=against)
        found += [p for p, _, blob in entries if _digest(p, blob) in noted and p not in found]
    return found


def _secret_entries(
    worktree: Path,
    *,
    env: Mapping[str, str] | None = None,
    base: Sequence[str] = (),
    against: str | None = None,
) -> list[tuple[str, str]]:
    """(path, blob) of each file :func:`holding_secrets` finds."""
    # Only values that look made up: a secret-named setting of a word (DB_PASSWORD=postgres,
    # PIP_KEYRING_PROVIDER=subprocess) is in half the files of a repository.
    values = [
        v.encode("utf-8", "surrogateescape") for v in redact.current().values if redact.made_up(v)
    ]
    if not values:
        return []
    found = []
    with ObjectReader(worktree, env=env) as objects:
        # What the commit would hold (a link's target, a file as git converted it), not what
        # the worktree shows.
        for path, mode, blob in staged_entries(worktree, env=env, base=base, against=against):
            # A gitlink holds a commit id; an unmerged entry no blob of its own (all zeros).
            unread = not _has_blob(mode, blob)
            head = b"" if unread else objects.read(blob, limit=_SECRET_SCAN_LIMIT)
            held = [value for value in values if value in head]
            named = any(value in os.fsencode(path) for value in values)
            if (held and not _committed_with(worktree, path, held, base, against)) or (
                named and not _committed_with(worktree, path, [], base, against)
            ):
                found.append((path, blob))
    return found


def _committed_with(
    worktree: Path, path: str, values: Sequence[bytes], base: Sequence[str], against: str | None
) -> bool:
    """Whether *path* was last committed holding every one of *values* (not the agent's).

    Last committed: in *against*, or HEAD.
    """
    shown = runner.run_bytes(
        worktree, *base, "cat-file", "blob", f"{against or 'HEAD'}:{path}", check=False
    )
    return shown.returncode == 0 and all(value in shown.stdout for value in values)

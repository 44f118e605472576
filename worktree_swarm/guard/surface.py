"""The repository's executable surface: the git files that make git run code.

``config`` (``core.fsmonitor``, ``core.pager``, ``filter.*``, aliases...), per-worktree
``config.worktree`` files, ``hooks/`` (and the directory ``core.hooksPath`` names) and
``info/`` (``attributes`` assigns filters and diff drivers; ``exclude`` hides files from the
checkout's scan), the same files of each submodule's git dir under ``modules/`` (an admin
dir's too: git keeps a linked worktree's there), the state of an operation in progress in
your checkout (a rebase's todo list, ``MERGE_HEAD``...), ``shallow``, a ``commondir``
planted at the top of the git dir (it would point your next git at another repository's
config), the object stores ``objects/info/alternates`` adds, old-style remotes
(``remotes/``, ``branches/``) and rerere's recorded resolutions (``rr-cache/``, by name).
Each is kept byte for byte at the baseline, so a change can be shown as a patch and undone
exactly. And every symlink or hard link where git writes for your checkouts
(``COMMIT_EDITMSG``, ``logs/``, ``refs/``): git never makes one there, but writes through
one it finds. The permission bits of the directories git keeps there (the git dir itself,
``objects/``, ``refs/``, ``logs/``, ``worktrees/``, ``modules/``...), of the
``core.hooksPath`` directory and of each task worktree's top: one made writable by another
local user lets that user plant a config of their own; and, on a deeper look, setuid and
setgid files anywhere in the git dir.

Read here (which paths the scan looks at; what one path is as an entry: ``surface_entry``);
compared and shown as a patch in ``surface_diff``, put back in ``surface_restore``; the deeper
walk for setuid files is ``setuid``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from worktree_swarm.guard.dir_modes import DirModes, lstat_mode
from worktree_swarm.guard.hooks_dir import HOOK_NAMES
from worktree_swarm.guard.in_progress import DIRS as _IN_PROGRESS_DIRS
from worktree_swarm.guard.in_progress import FILES as IN_PROGRESS_FILES
from worktree_swarm.guard.surface_entry import (
    HARD_LINK,
    LOOSER,
    MODE,
    SHARED_WRITE,
    UNREACHED,
    UNREADABLE,
    Entry,
    Surface,
    add,
    add_tree,
    label_of,
    read_one,
)
from worktree_swarm.guard.worktree_configs import MODULES, WorktreeConfigs
from worktree_swarm.infra import fs

_NAME_DEPTH = 8  # slashes in a submodule's name walked through under modules/


# rerere's recorded resolutions: its existence turns rerere on for your merges.
RERERE = "rr-cache"

# Other object stores git reads objects from: objects moved out of yours into one an agent
# names (its worktree, which `swarm clean` deletes) are still found, so nothing looks missing.
ALTERNATES = ("objects/info/alternates", "objects/info/http-alternates")

# What ties a linked worktree of yours to the repository, in its admin dir (with the ``.git``
# file of the worktree itself): pointed at a copy an agent made (the same refs and objects, so
# git there sees no change), your git in that worktree reads the copy's config, and runs its
# ``core.fsmonitor``; a ``gitdir`` naming no worktree has your next `git gc` prune its admin dir.
TIES = ("commondir", "gitdir")

# Old-style remote definitions: a planted one would point your next `git pull NAME` elsewhere.
_STEERING_DIRS = ("remotes", "branches")


def read(
    common: Path,
    extra_hooks: Iterable[Path],
    linked: Mapping[Path, Path] | None = None,
    tops: Iterable[Path] = (),
    dir_modes: DirModes | None = None,
) -> Surface:
    """Every watched file of the git dir *common* (and of each of *extra_hooks*, its top level).

    Also every symlink and hard link where git writes for your checkouts: at the top of
    *common* and of the admin dir of each of your linked worktrees (*linked*: worktree ->
    admin dir), under their ``logs/``, and under ``refs/`` (a ref directory swapped for a link
    would have a restored ref written through). And what ties each linked worktree to the
    repository: its ``.git`` file, its admin dir's ``commondir`` and ``gitdir``. And the
    permission bits of the directories git keeps in *common* and of *tops* (task worktrees);
    *dir_modes*: those of worktree admin dirs and *tops*, and whether an admin dir holds a
    ``config.worktree``, looked at again only where changed.
    """
    found: Surface = {}
    linked = linked or {}
    dir_modes = dir_modes or DirModes(watch=False)
    _add_modes(found, common, tops, dir_modes)
    for top in (common, *linked.values()):
        _add_links(found, common, top)
    _add_ties(found, common, linked)
    _add_links(found, common, common / "refs", depth=1)  # the guard's own restores write there
    for name in ("config", "config.worktree", "commondir", *IN_PROGRESS_FILES, *ALTERNATES):
        add(found, common, common / name)
    _add_worktree_configs(found, common, dir_modes.configs)
    for name in ("hooks", "info", *_STEERING_DIRS, *_IN_PROGRESS_DIRS):
        add_tree(found, common, common / name)
    for admin in linked.values():
        _add_in_progress(found, common, admin)
    _add_top(found, common, common / RERERE)
    _add_modules(found, common, common / "modules")
    for hooks in extra_hooks:
        _add_hooks_path(found, common, Path(os.path.realpath(hooks)))
    return found


def _add_hooks_path(found: Surface, common: Path, hooks: Path) -> None:
    """The top level of the directory ``core.hooksPath`` names (*hooks*), and its own bits.

    Its bits are watched as the git dir's own directories are: one shut to its owner after a
    hook was planted in it is opened first, then read (the guard's scan puts bits back first).
    """
    if hooks.is_relative_to(Path(os.path.realpath(common / "hooks"))):
        return  # read with the git dir's own
    bits = _add_shut_dir(found, common, hooks)
    if bits is None:
        return
    try:
        names = sorted(os.listdir(hooks))  # noqa: PTH208 - names only
    except OSError:  # made unreadable: git still runs a hook there by its name
        found[label_of(common, hooks)] = Entry(kind=UNREADABLE, bits=bits)
        names = list(HOOK_NAMES)
    for name in names:
        child = hooks / name
        try:
            if stat.S_ISDIR(child.lstat().st_mode):
                continue  # git runs top-level hooks only
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:  # shut to its owner: not known now, its bits are put back first
            found[label_of(common, child)] = Entry(kind=UNREACHED)
            continue
        add(found, common, child)


def _add_shut_dir(found: Surface, common: Path, path: Path) -> int | None:
    """*path*'s bits as a watched directory's (:data:`MODE`); None if it is none.

    Not looked at (its parent shut to its owner): recorded as not known now.
    """
    try:
        mode = path.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        found[label_of(common, path)] = Entry(kind=UNREACHED)
        return None
    if not stat.S_ISDIR(mode):
        return None
    _add_dir_mode(found, os.fspath(common), os.fspath(path), mode, mode_bits(path.parent))
    return stat.S_IMODE(mode)


def _add_modes(found: Surface, common: Path, tops: Iterable[Path], dir_modes: DirModes) -> None:
    """The permission bits of the git dir's own directories (not its files) and of *tops*.

    ``refs/`` and ``logs/`` below their top are recorded as they are walked for links. On
    plain strings: a scan runs many times a task, and ``pathlib`` cost more than the calls.
    The fan-out directories of ``objects/``, the admin dirs and *tops* (one of each per task)
    come from *dir_modes*: looked at again only where inotify saw a change.
    """
    top = os.fspath(common)
    _add_mode(found, top, top, SHARED_WRITE)  # always in the baseline
    for name in ("objects", "objects/info", "objects/pack", "refs", "logs", "worktrees"):
        head = name.rpartition("/")[0]
        _add_mode(found, top, f"{top}/{name}", mode_bits(f"{top}/{head}" if head else top))
    for parent in (f"{top}/objects", f"{top}/worktrees"):  # fan-out and admin dirs
        with contextlib.suppress(OSError):  # absent, or made unreadable: its own bits say so
            modes = dir_modes.modes(parent)
            _add_entry_modes(found, top, parent, modes, mode_bits(parent))
    by_parent: dict[str, list[str]] = {}  # the worktree root: one watch for all of them
    for path in tops:
        parent, name = _split(os.fspath(path))
        by_parent.setdefault(parent, []).append(name)
    for parent, names in by_parent.items():
        shared = mode_bits(parent)
        try:
            modes = dir_modes.modes(parent, names)
        except OSError:  # each looked at as it is
            modes = {n: m for n in names if (m := lstat_mode(_joined(parent, n))) is not None}
        _add_entry_modes(found, top, parent, modes, shared)


@functools.lru_cache(maxsize=4096)
def _split(path: str) -> tuple[str, str]:
    """*path*'s directory and name (a task worktree's top: the same ones on every read)."""
    return os.path.dirname(path), os.path.basename(path)  # noqa: PTH119, PTH120


def _joined(parent: str, name: str) -> str:
    """The path of *name* in *parent*, as :func:`_split` took it apart."""
    return os.path.join(parent, name)  # noqa: PTH118 - strings here


# (git dir, parent) -> the parent's bits, its entries' modes, the entries they made: the
# same modes and bits make the same entries, so a read where none changed (nearly all: one
# admin dir and one top per task) takes them whole instead of one by one.
_MODE_MEMO: dict[tuple[str, str], tuple[int, dict[str, int], Surface]] = {}
_MODE_MEMO_MAX = 64  # (git dir, parent) pairs kept: a guard has three, a test suite many


def _add_entry_modes(
    found: Surface, top: str, parent: str, modes: dict[str, int], shared: int
) -> None:
    """The bits of the directories among *modes* (names in *parent*: their modes).

    *shared*: *parent*'s bits. An entry already in *found* is kept, as :func:`_add_dir_mode`
    keeps it.
    """
    key = (top, parent)
    memo = _MODE_MEMO.get(key)
    if memo is not None and memo[0] == shared and memo[1] == modes:
        entries = memo[2]
    else:
        entries = {}
        for name, mode in modes.items():
            _add_dir_mode(entries, top, _joined(parent, name), mode, shared)
        if len(_MODE_MEMO) >= _MODE_MEMO_MAX:
            _MODE_MEMO.clear()
        _MODE_MEMO[key] = (shared, dict(modes), entries)
    kept = {label: found[label] for label in found.keys() & entries.keys()}
    found.update(entries)
    found.update(kept)


UMASK = fs.umask()  # read once, at import


def mode_bits(path: str | Path) -> int:
    """The permission bits of *path* (not followed); SHARED_WRITE when it cannot be read."""
    try:
        return stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return SHARED_WRITE  # nothing to compare with: not looser


def _add_mode(
    found: Surface,
    top: str,
    path: str,
    shared: int,
    entry: os.DirEntry[str] | None = None,
) -> None:
    """*path*'s bits, when it is a directory; *shared*: its parent's bits (*entry*: its own).

    *top* is the git dir's path: the label is *path* below it.
    """
    try:
        info = os.lstat(path) if entry is None else entry.stat(follow_symlinks=False)
    except OSError:
        return
    _add_dir_mode(found, top, path, info.st_mode, shared)


def _add_dir_mode(found: Surface, top: str, path: str, mode: int, shared: int) -> None:
    """*path*'s bits from its *mode* when it is a directory (see :func:`_add_mode`)."""
    if stat.S_ISDIR(mode):  # a symlink or file there is another matter
        bits = stat.S_IMODE(mode)
        looser = LOOSER if bits & SHARED_WRITE & ~shared & UMASK else b""
        found.setdefault(label_of(top, path), _mode_entry(bits, looser))


@functools.lru_cache(maxsize=256)
def _mode_entry(bits: int, looser: bytes) -> Entry:
    """The entry of a directory's *bits* (one per value: entries are immutable)."""
    return Entry(kind=MODE, bits=bits, data=looser)


def _add_ties(found: Surface, common: Path, linked: Mapping[Path, Path]) -> None:
    for checkout, admin in linked.items():
        for path in (checkout / ".git", *(admin / name for name in TIES)):
            add(found, common, path)


def _add_in_progress(found: Surface, common: Path, admin: Path) -> None:
    for name in IN_PROGRESS_FILES:
        add(found, common, admin / name)
    for name in _IN_PROGRESS_DIRS:
        add_tree(found, common, admin / name)


def ties(common: Path, checkout: Path, admin: Path, *, held: Iterable[str] = ()) -> set[str]:
    """The labels of what ties the linked worktree *checkout* (git dir *admin*) to *common*.

    With those of *held* in *admin* or *checkout* (its operation in progress, its hooks
    directory): what goes with it removed.
    """
    inside = (label_of(common, admin) + "/", os.fspath(checkout) + "/")
    tied = {label_of(common, path) for path in (checkout / ".git", *(admin / n for n in TIES))}
    return tied | {label for label in held if label.startswith(inside)}


def _add_worktree_configs(found: Surface, common: Path, configs: WorktreeConfigs) -> None:
    """Each admin dir's ``config.worktree``, and the git dirs of its worktree's submodules."""
    for path in configs.to_read(f"{common}/worktrees"):
        if path.endswith(f"/{MODULES}"):
            _add_modules(found, common, Path(path))
            continue
        label = label_of(common, path)
        entry = configs.entry(path, functools.partial(read_one, common, label))
        if entry is not None:
            found[label] = entry


def _add_links(found: Surface, common: Path, top: Path, depth: int = 0) -> None:
    """The symlinks at the top of the git dir *top* and under its ``logs/``.

    git never makes one there, but writes through one it finds: your next commit writes
    ``COMMIT_EDITMSG`` and appends to ``logs/HEAD`` and your branch's reflog wherever a
    planted link points.
    """
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return  # unreadable: its bits are watched (below, or as the git dir's own)
    renamed = _renamed_over(common, top)
    shared = mode_bits(top)
    for entry in entries:  # one per branch under refs/ and logs/: no Path unless one is found
        if entry.is_symlink():
            add(found, common, Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            if renamed is not None and entry.name not in renamed and _linked_more(entry):
                add_hard_link(found, common, Path(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            if entry.name == "logs" if depth == 0 else depth < _NAME_DEPTH:
                if depth > 0 or top == common:  # ref and reflog directories, not a worktree's
                    _add_mode(found, os.fspath(common), entry.path, shared, entry)
                _add_links(found, common, Path(entry.path), depth + 1)
        elif _blocking(entry):
            add(found, common, Path(entry.path))


def _blocking(entry: os.DirEntry[str]) -> bool:
    """Whether *entry* is a named pipe or a device: git reading it would wait, or never end.

    git never makes one in a git dir; one planted under ``refs/`` stops every `git
    for-each-ref` (yours and the guard's) at its open. Sockets are left alone: git's own
    fsmonitor daemon listens on one at the top of the git dir, and opening one fails at once.
    """
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError:  # gone, or its directory made unsearchable (its bits are watched)
        return False
    return fs.special(mode)


# Files git writes aside and renames over, never in place: a hard link there is harmless (a
# backup made with `cp -al` links them all), so not looked for.
_RENAMED_OVER = frozenset({"HEAD", "index", "packed-refs", "ORIG_HEAD"})


def _renamed_over(common: Path, top: Path) -> frozenset[str] | None:
    """The files of the directory *top* that git replaces by a rename; None for all (refs)."""
    # By string, as `is_relative_to` and `relative_to`: once per directory walked, every read.
    git_dir, path = os.fspath(common), os.fspath(top)
    refs = f"{git_dir}/refs"
    if path == refs or path.startswith(f"{refs}/"):
        return None
    parts = path[len(git_dir) + 1 :].split("/") if path.startswith(f"{git_dir}/") else []
    return frozenset() if "logs" in parts else _RENAMED_OVER  # logs/HEAD: appended to


def _linked_more(entry: os.DirEntry[str]) -> bool:
    """Whether the file of *entry* has another name too."""
    try:
        return entry.stat(follow_symlinks=False).st_nlink > 1
    except OSError:  # gone, or its directory made unsearchable (its bits are watched)
        return False


def add_hard_link(found: Surface, common: Path, path: Path) -> None:
    """*path*, a file, when it has another name too.

    git writes through a hard link as through a symlink (``COMMIT_EDITMSG`` truncated, a
    reflog appended to), and never makes one there. Told apart by its inode: its bytes are
    git's to change.
    """
    try:
        info = path.lstat()
    except OSError:  # gone, or its directory made unsearchable (its bits are watched)
        return
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        found[label_of(common, path)] = Entry(kind=HARD_LINK, data=b"%d" % info.st_ino)


def _add_top(found: Surface, common: Path, top: Path) -> None:
    """*top* and what it holds, by name only (there may be many): rerere's resolutions.

    Each is one your next conflict would get without asking: a new one is a change.
    """
    add(found, common, top)
    if top.is_dir() and not top.is_symlink():
        try:
            names = sorted(os.listdir(top))  # noqa: PTH208 - names only
        except PermissionError:  # made unreadable: its bits say so (above), the rest is read
            return
        for name in names:
            path = top / name
            found[label_of(common, path)] = Entry(kind="dir" if path.is_dir() else "other")


def _add_modules(found: Surface, common: Path, modules: Path, depth: int = 0) -> None:
    """The same files of each submodule's git dir under *modules* (their own ``modules`` too).

    Your next `git status` looks inside a checked-out submodule under that git dir's config
    and attributes. A submodule's name may hold slashes: directories on the way are walked.
    The bits of each directory on the way (*modules*, each git dir) are watched as the git
    dir's own: one shut to its owner hides a planted ``core.fsmonitor`` only until the
    guard's scan opens it (bits first), then reads it.
    """
    bits = _add_shut_dir(found, common, modules)
    if bits is None:
        return
    try:
        names = sorted(os.listdir(modules))  # noqa: PTH208 - usually absent: one call
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:  # made unreadable: what it holds is not known now, its bits are
        found[label_of(common, modules)] = Entry(kind=UNREADABLE, bits=bits)
        return
    for name in names:
        gitdir = modules / name
        if _is_git_dir(gitdir):
            _add_shut_dir(found, common, gitdir)
            for file in ("config", "config.worktree", "commondir"):  # commondir: another's
                add(found, common, gitdir / file)
            for tree in ("hooks", "info"):
                add_tree(found, common, gitdir / tree)
            _add_modules(found, common, gitdir / "modules")
        elif depth < _NAME_DEPTH:  # a directory of a name with slashes, or shut: read so
            _add_modules(found, common, gitdir, depth + 1)


def _is_git_dir(path: Path) -> bool:
    """Whether the directory *path* holds a ``HEAD`` file (False when it cannot be told)."""
    try:
        return stat.S_ISREG((path / "HEAD").stat().st_mode) and not path.is_symlink()
    except OSError:
        return False

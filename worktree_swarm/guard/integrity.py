"""Every watched ref must resolve to a complete commit; task work is kept in a private pack.

A deleted object (the loose file of a branch tip, a tree, a blob) breaks a branch without
moving it. Each check asks git about every ref's tip commit and root tree in one batch, and
walks every object a task branch added on top of the user's branches. After a good check the
new objects of each task branch are copied into a pack under the run's guard directory, which
the sandbox keeps read-only: a broken task branch gets its objects back from there.

The guard's directory may lie on another file system than the object store (``.git/swarm``
a mount of its own): its packs are written there by git's output, not renamed into place from
the store. The kept packs and the held object files (held_files.py) are put back from there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import runner
from worktree_swarm.guard.held_files import link_back, missing_held, put_back, written_over
from worktree_swarm.guard.snapshot import ref_owner
from worktree_swarm.infra import fs

KEEP_PREFIX = "refs/swarm/keep/"
_REFLOG_LOOK = 50  # the newest entries of a reflog looked at for a complete commit
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256


def broken_refs(
    root: Path, refs: Mapping[str, str], *, deep: bool, only: Collection[str] | None = None
) -> list[str]:
    """The refs of *refs* whose tip or root tree is missing.

    With *deep*, also those task branches any object of which (on top of the user's branches)
    is missing. *only*: the refs to check (by default all); the others are known complete,
    and the user's branches among them still bound the walk.
    """
    checked = refs if only is None else {r: s for r, s in refs.items() if r in only}
    if not checked:
        return []
    if deep and only is not None and all(ref_owner(ref) is not None for ref in checked):
        # Task branches alone: an object missing from one is out of your complete branches'
        # reach, so the walk bounded by them meets it, tip and root tree included.
        user = [sha for ref, sha in refs.items() if ref_owner(ref) is None]
        if _complete(root, sorted(set(checked.values())), user):
            return []
    tips = sorted(set(checked.values()))
    # One process for tips and root trees (a tip that is no commit has no tree to ask about).
    kinds = _batch_check(root, [*tips, *(f"{t}^{{tree}}" for t in tips)])
    commits = [t for t in tips if kinds.get(t) == "commit"]
    bad = {t for t in tips if kinds.get(t) is None}
    bad |= {c for c in commits if kinds.get(f"{c}^{{tree}}") is None}
    user = [sha for ref, sha in refs.items() if ref_owner(ref) is None and sha not in bad]
    user = [sha for sha in user if kinds.get(sha, "commit") == "commit"]  # unchecked: complete
    tasks = sorted({sha for ref, sha in checked.items() if ref_owner(ref) is not None} - bad)
    # One walk for all task branches; only when it finds a hole, one per branch to say whose.
    if deep and tasks and not _complete(root, tasks, user):
        bad |= {sha for sha in tasks if not _complete(root, [sha], user)}
    return sorted(ref for ref, sha in checked.items() if sha in bad)


def keep(
    root: Path, common: Path, pack_dir: Path, tips: Sequence[str], exclude: Sequence[str]
) -> None:
    """Copy the objects of *tips* not reachable from *exclude* into a pack in *pack_dir*."""
    if not tips:
        return
    pack_dir.mkdir(parents=True, exist_ok=True)
    revs = "\n".join([*tips, *(f"^{e}" for e in exclude)]) + "\n"
    if _same_file_system(pack_dir, common / "objects"):
        runner.run(root, "pack-objects", "--revs", "-q", str(pack_dir / "keep"), input_text=revs)
        return
    # git writes a pack in the store and renames it into place, which cannot cross file
    # systems: written here from its output instead, indexed here, then named as git names it.
    with tempfile.NamedTemporaryFile(dir=pack_dir, prefix="tmp-", suffix=".pack") as out:
        temp = Path(out.name)
        try:
            runner.run_into(root, out.file, "pack-objects", "--revs", "--stdout", input_text=revs)
            name = runner.run(root, "index-pack", "--no-rev-index", str(temp)).stdout.strip()
            if (pack_dir / f"keep-{name}.idx").exists():
                return  # the same objects kept already (as git takes an existing pack)
            os.chmod(temp, 0o444)  # noqa: PTH101 - as git leaves a pack
            os.chmod(temp.with_suffix(".idx"), 0o444)  # noqa: PTH101
            with contextlib.suppress(FileExistsError):  # a .pack whose .idx never came
                os.link(temp, pack_dir / f"keep-{name}.pack")
            temp.with_suffix(".idx").rename(pack_dir / f"keep-{name}.idx")  # the .idx last
        finally:
            temp.with_suffix(".idx").unlink(missing_ok=True)


def _same_file_system(a: Path, b: Path) -> bool:
    """Whether the directories *a* and *b* lie on one file system (taken so if *b* is gone)."""
    try:
        return a.stat().st_dev == b.stat().st_dev
    except FileNotFoundError:  # the store moved: git's own command says what is wrong
        return True


def recover(common: Path, pack_dir: Path, held: Path | None = None) -> None:
    """Put the kept packs, and the held object files missing now, back into the object store.

    git skips objects it has twice. A held file or a kept pack that cannot be put back stops
    nothing else: the first such failure is raised at the end.
    """
    failed: list[OSError] = []
    if held is not None:
        try:
            link_back(missing_held(common, held))
        except OSError as error:
            failed.append(error)
        try:
            unread: list[tuple[Path, Path]] = []  # put back too: the held file is the object
            put_back([*written_over(common, held, unread=unread), *unread])
        except OSError as error:
            failed.append(error)
    try:
        _recover_packs(common, pack_dir)
    except OSError as error:
        failed.append(error)
    if failed:
        raise failed[0]


def _recover_packs(common: Path, pack_dir: Path) -> None:
    """Copy the kept packs of *pack_dir* missing from the object store back into it.

    One that cannot be copied (unreadable, the store's pack directory unwritable, its disk
    full) stops none of the others: OSError at the end names each. Each file is copied under
    a temporary name of git's and linked into place whole, the ``.idx`` last (git's order).
    """
    if not pack_dir.is_dir():
        return
    target = common / "objects" / "pack"
    target.mkdir(parents=True, exist_ok=True)
    failed = []
    for idx in sorted(pack_dir.glob("keep-*.idx")):
        pack = idx.with_suffix(".pack")
        if not pack.is_file():
            continue
        name = idx.stem.removeprefix("keep-")
        try:
            for source, suffix in ((pack, ".pack"), (idx, ".idx")):
                dest = target / f"pack-{name}{suffix}"
                if dest.is_symlink() or not dest.exists():  # a link is no pack of the store
                    _copy_whole(source, dest)
        except OSError as error:
            failed.append(f"{pack.name} ({error.strerror or error})")
    if failed:
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""  # noqa: PLR2004
        raise OSError(f"kept packs not put back: {', '.join(failed[:3])}{more}")


def _copy_whole(source: Path, dest: Path) -> None:
    """Copy *source* as *dest* (read-only, as git leaves a pack), never a part of it there.

    A symlink at *dest* (an agent's, dangling or not) is replaced, never written through.
    """
    fd, temp = tempfile.mkstemp(prefix="tmp_pack_", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, temp)
        os.chmod(temp, 0o444)  # noqa: PTH101
        try:
            os.link(temp, dest)
        except FileExistsError:  # git's own put there meanwhile is kept; a link is not
            if dest.is_symlink():
                Path(temp).replace(dest)  # renames over the link itself
    finally:
        with contextlib.suppress(FileNotFoundError):  # renamed into place
            os.unlink(temp)  # noqa: PTH108


def recover_held(root: Path, common: Path, held: Path) -> None:
    """Link back each held object git no longer finds (a pack: each pack that is gone).

    For the end of a run, when the refs are complete: an object deep in your history is not
    asked about on every scan. A loose file git removed because a pack holds its object now
    (`gc`) stays removed.
    """
    gone = missing_held(common, held)
    loose = {f"{dest.parent.name}{dest.name}": (source, dest) for source, dest in gone
             if dest.parent.name != "pack"}  # fmt: skip
    present = _batch_check(root, sorted(loose))
    # A pack that is gone comes back only when git misses one of its objects (a `git gc`
    # of yours replaced it by a new one otherwise).
    packs = {
        dest.stem for source, dest in gone if dest.suffix == ".idx" and _missing_from(root, source)
    }
    # One that fails (its directory made a file) is told at the end, the others put back.
    link_back(
        (source, dest)
        for source, dest in gone
        if f"{dest.parent.name}{dest.name}" not in present
        and (dest.parent.name != "pack" or dest.stem in packs)
    )


def _missing_from(root: Path, idx: Path) -> bool:
    """Whether the store of *root* misses an object the pack index *idx* lists.

    A listing that failed (a killed git's may end mid-line) tells nothing: taken for yes, the
    pack is put back (git skips objects it has twice).
    """
    listed = runner.run_bytes(root, "show-index", input_bytes=fs.read_file(idx), check=False)
    if listed.returncode != 0:
        return True
    names = [line.split()[1].decode() for line in listed.stdout.splitlines() if line.strip()]
    return len(_batch_check(root, names)) < len(names)


def last_complete(root: Path, common: Path, ref: str) -> str | None:
    """The newest commit *ref*'s reflog names whose commit and root tree are there, or None.

    For a ref the guard never saw complete (a task's branch made since its last check).
    """
    try:
        lines = fs.read_file(common / "logs" / ref).decode(errors="replace").splitlines()
    except OSError:
        return None
    named: list[str] = []
    for line in reversed(lines[-_REFLOG_LOOK:]):
        for sha in reversed(line.split(" ", 2)[:2]):  # the entry's new value, then its old
            if _OBJECT_ID.fullmatch(sha) and sha.strip("0") and sha not in named:
                named.append(sha)
    kinds = _batch_check(root, [*named, *(f"{sha}^{{tree}}" for sha in named)])
    return next((s for s in named if kinds.get(s) == "commit" and f"{s}^{{tree}}" in kinds), None)


def keep_ref(ref: str) -> str:
    """Where the last good tip of *ref* is kept when *ref* breaks."""
    return KEEP_PREFIX + ref.removeprefix("refs/")


def _batch_check(root: Path, names: Sequence[str]) -> dict[str, str]:
    """Object type of each of *names* that exists (and is complete enough to peel)."""
    if not names:
        return {}
    out = runner.run(
        root, "cat-file", "--batch-check=%(objecttype)", input_text="\n".join(names) + "\n"
    ).stdout.splitlines()
    found = {}
    for name, line in zip(names, out, strict=False):
        if not line.endswith(" missing") and not line.endswith(" ambiguous"):
            found[name] = line.strip()
    return found


def whole(root: Path, tips: Collection[str], *, stop: threading.Event | None = None) -> bool:
    """Whether every object *tips* reach is present: a walk of their whole history.

    Cut short once *stop* is set (StoppedError): on a big repository it takes minutes.
    """
    return _complete(root, sorted(set(tips)), (), stop=stop)


def _complete(
    root: Path, tips: Sequence[str], exclude: Sequence[str], *, stop: threading.Event | None = None
) -> bool:
    """Whether every object reachable from *tips* but not from *exclude* is present.

    The tips are given on stdin: tens of thousands of tags (each a branch of yours to *exclude*)
    are more than a command line holds.
    """
    revs = [*tips, *(f"^{sha}" for sha in sorted(set(exclude)))]
    args = ["rev-list", "--objects", "--missing=print", "--stdin"]
    try:
        out = runner.run(root, *args, input_text="\n".join(revs) + "\n", stop=stop).stdout
    except (CommandError, subprocess.SubprocessError):
        return False
    return not any(line.startswith("?") for line in out.splitlines())

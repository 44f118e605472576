"""Every watched ref must resolve to a complete commit; task work is kept in a private pack.

A deleted object (the loose file of a branch tip, a tree, a blob) breaks a branch without
moving it. Each check asks git about every ref's tip commit and root tree in one batch, and
walks every object a task branch added on top of the user's branches. After a good check the
new objects of each task branch are copied into a pack under the run's guard directory, which
the sandbox keeps read-only: a broken task branch gets its objects back from there.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from worktree_swarm.core.errors import CommandError
from worktree_swarm.git import runner
from worktree_swarm.guard.snapshot import ref_owner

KEEP_PREFIX = "refs/swarm/keep/"


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


def keep(root: Path, pack_dir: Path, tips: Sequence[str], exclude: Sequence[str]) -> None:
    """Copy the objects of *tips* not reachable from *exclude* into a pack in *pack_dir*."""
    if not tips:
        return
    pack_dir.mkdir(parents=True, exist_ok=True)
    lines = [*tips, *(f"^{e}" for e in exclude)]
    runner.run(
        root,
        "pack-objects",
        "--revs",
        "-q",
        str(pack_dir / "keep"),
        input_text="\n".join(lines) + "\n",
    )


def recover(common: Path, pack_dir: Path) -> None:
    """Put the kept packs back into the object store (git skips objects it has twice)."""
    if not pack_dir.is_dir():
        return
    target = common / "objects" / "pack"
    target.mkdir(parents=True, exist_ok=True)
    for idx in sorted(pack_dir.glob("keep-*.idx")):
        pack = idx.with_suffix(".pack")
        if not pack.is_file():
            continue
        name = idx.stem.removeprefix("keep-")
        for source, suffix in ((pack, ".pack"), (idx, ".idx")):  # the .idx last: git's order
            dest = target / f"pack-{name}{suffix}"
            if not dest.exists():
                shutil.copyfile(source, dest)
                dest.chmod(0o444)


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


def _complete(root: Path, tips: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether every object reachable from *tips* but not from *exclude* is present."""
    args = ["rev-list", "--objects", "--missing=print", *tips, "--not", *exclude, "--"]
    try:
        out = runner.run(root, *args).stdout
    except (CommandError, subprocess.SubprocessError):
        return False
    return not any(line.startswith("?") for line in out.splitlines())

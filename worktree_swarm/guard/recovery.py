"""What a killed manager's guard left half done, finished by the next command.

The notes the guard writes before it acts (a task worktree being moved back, the
remote-tracking refs being put back, a verdict not yet applied by the run) name what it was
doing: :func:`finish_put_backs` completes those put-backs, :func:`cut_verdicts` hands the
unapplied verdicts to the caller to record and apply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.git import repo as git
from worktree_swarm.git import tampering
from worktree_swarm.guard import remotes
from worktree_swarm.guard.model import Violation
from worktree_swarm.guard.restore import keep_undone, restore_ref, undone_commits
from worktree_swarm.guard.snapshot import is_clean, read_refs, status
from worktree_swarm.infra import fs

MOVING = "moving-back"  # a task worktree's admin dir -> [where it was found, its place]
REMOTES_NOTE = "remotes-putting-back.json"  # remote-tracking refs being put back (remotes.py)
# A verdict from before its put-back until the run applied it (see Guard.settled): one of a
# manager killed meanwhile is recorded and applied by the next command (cut_verdicts).
VERDICTS = "verdicts"


def move_back(repo: git.Repo, moved: Path, path: Path) -> None:
    """Move the task worktree found at *moved* back to *path*."""
    # Twice --force: an agent may have locked it too. git renames it and its admin dir
    # follows; the agent's own files, even open ones, move back with it.
    git.git(repo.root, "worktree", "move", "--force", "--force", str(moved), str(path))


def finish_put_backs(repo: git.Repo, work_dir: Path) -> list[str]:
    """Finish what a killed manager's guard (in *work_dir*) was putting back; as lines.

    The remote-tracking refs it was setting back (those not moved since), and the task
    worktrees it was moving back: only one still whole where it was found, registered in the
    same admin dir, with nothing at its place (the move was cut short, not done since).
    """
    done = []
    with contextlib.suppress(SwarmError, OSError):
        back = remotes.finish(repo.root, repo.common_dir, work_dir / REMOTES_NOTE)
        if back:
            done.append(f"remote-tracking refs put back (cut short): {back}")
    for note in sorted((work_dir / MOVING).glob("*")):
        with contextlib.suppress(ValueError, SwarmError, OSError, UnicodeDecodeError):
            moved, path = map(Path, json.loads(fs.read_file(note)))
            admin = repo.common_dir / "worktrees" / note.name
            if not os.path.lexists(path) and moved_to(admin, path) == moved:
                move_back(repo, moved, path)
                done.append(f"worktree moved back from {moved} to {path} (cut short)")
        note.unlink(missing_ok=True)
    return done


def unsettled(work_dir: Path) -> bool:
    """Whether a killed manager's guard (in *work_dir*) left put-backs or verdicts to finish."""
    if os.path.lexists(work_dir / REMOTES_NOTE):
        return True
    return any(True for name in (MOVING, VERDICTS) for _ in (work_dir / name).glob("*"))


def cut_verdicts(repo: git.Repo, work_dir: Path) -> list[tuple[Path, Violation, bool]]:
    """The verdicts a killed manager's guard (in *work_dir*) left unapplied, oldest first.

    Each: its note, the violation and whether the guard had handed it to the run (then it may
    be on record already). One noted before its put-back and not handed over is *cut_short*:
    its refs still as the agent left them are set back (compare-and-swap), and it is
    *restored* when its place is found as it was (the task worktree whole at its place, each
    ref at its value before). The caller records and applies each, then removes its note.
    Called after :func:`finish_put_backs`, which moves a worktree back.
    """
    found = []
    for aside in (work_dir / VERDICTS).glob("*.tmp"):  # a note whose writing was cut short
        aside.unlink(missing_ok=True)
    for note in sorted((work_dir / VERDICTS).glob("*.json"), key=_note_order):
        try:
            data = json.loads(fs.read_file(note))
            violation = Violation.from_dict(data["violation"])
            recorded = data.get("recorded") is True
            path = data.get("worktree")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            note.unlink(missing_ok=True)  # torn: the rename that writes one was never done
            continue
        if not recorded:
            back = False
            with contextlib.suppress(SwarmError, OSError):
                back = _put_back_now(repo, violation, path)
            violation = dataclasses.replace(violation, restored=back, cut_short=True)
        found.append((note, violation, recorded))
    return found


def _note_order(note: Path) -> tuple[int, int]:
    made, _, number = note.stem.partition("-")
    return (int(made), int(number)) if made.isdigit() and number.isdigit() else (0, 0)


def _put_back_now(repo: git.Repo, violation: Violation, worktree: object) -> bool:
    """Whether *violation*'s place is as it was, its refs set back first where still moved."""
    if isinstance(worktree, str):  # moved back whole, or made again and checked out
        path = Path(worktree)
        whole = tampering.own_admin(repo, path) is not None
        return whole and (violation.worktree != "was removed" or is_clean(status(path)))
    if not violation.refs:
        return False  # files and git's own files: not known to be whole
    now = read_refs(repo.root)
    # Still as the agent left them: set back below, what that takes off kept first.
    left = [(r, before, after) for r, before, after in violation.refs if now.get(r) == after]
    keep_undone(repo.root, undone_commits(repo.root, left))
    back = True
    for ref, before, after in violation.refs:
        if now.get(ref) == before:
            continue
        back = now.get(ref) == after and restore_ref(repo.root, ref, before, after) and back
    return back


def moved_to(admin: Path, path: Path) -> Path | None:
    """Where the worktree registered in *admin* is now, when it is whole but not at *path*."""
    try:
        named = Path(fs.read_text(admin / "gitdir").strip())
    except (OSError, UnicodeDecodeError):
        return None
    where = named.parent
    if os.path.realpath(where) == os.path.realpath(path) or not os.path.lexists(named):
        return None
    try:
        back = git.git_dir(where)
    except SwarmError:
        return None
    return where if os.path.realpath(back) == os.path.realpath(admin) else None

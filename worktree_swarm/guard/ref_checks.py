"""The guard's checks of the refs: branches, tags, ``refs/stash``, the remote-tracking refs.

Only a task's own branch may move, and only while swarm works on that task (told apart from
a sibling's move by its worktree's HEAD reflog); swarm's own commands name their moves
through the channel. A move by an agent is reported and, unless the run allows outside
writes, set back, what that takes off kept under ``refs/swarm/undone/``. The remote-tracking
refs are put back once an attempt ends, without blame (remotes.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from pathlib import Path

from worktree_swarm.git import gitfiles, runner, tampering
from worktree_swarm.git import repo as git
from worktree_swarm.guard import integrity, remotes
from worktree_swarm.guard.model import MAIN, RefMove, Violation
from worktree_swarm.guard.recovery import REMOTES_NOTE
from worktree_swarm.guard.restore import keep_undone, restore_ref, undone_commits
from worktree_swarm.guard.snapshot import read_refs, ref_owner, ref_patch
from worktree_swarm.guard.verdicts import Verdicts

STASH = "refs/stash"
_REFLOG_TAIL = 1 << 16  # bytes read from the end of a reflog: its latest entries


def _last_move_to(path: Path, value: bytes) -> tuple[bytes, bytes] | None:
    """The latest (old, new) of the reflog at *path* whose new value is *value*, if any."""
    try:
        lines = _reflog_tail(path)
    except OSError:
        return None
    for line in reversed(lines):
        old, _, rest = line.partition(b" ")
        new = rest.partition(b" ")[0]
        if new == value:
            return old, new
    return None


def _reflog_tail(path: Path) -> list[bytes]:
    """The latest lines of the reflog at *path* (raises OSError as reading it does)."""
    with path.open("rb") as fh:
        start = max(0, fh.seek(0, os.SEEK_END) - _REFLOG_TAIL)
        fh.seek(start)
        return fh.read().splitlines()[1 if start else 0 :]  # the first may be cut


def ref_tip(repo: git.Repo, ref: str) -> str | None:
    """Where *ref* points: its loose file read (a new branch's), else git asked."""
    try:
        text = (repo.common_dir / ref).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    if gitfiles.is_object_name(text):
        return text
    said = runner.run(
        repo.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False
    )
    return said.stdout.strip() or None


class RefChecks(Verdicts):
    """The refs' scans and put-backs."""

    def _hear(self) -> set[str]:
        """Read swarm's announcements now: the refs (and worktrees) being moved."""
        pending: set[str] = set()
        with self._job("ref announcements"):
            pending, refused = self._channel.read()
            for why in refused:
                self._failed("ref announcements", why)
        return pending

    def _scan_refs(self, began: float, pending: set[str]) -> list[Violation]:
        window = (self._refs_checked, began)
        self._refs_checked = began
        by_place: dict[str, list[RefMove]] = {}
        for move in self._moved_refs(pending):
            by_place.setdefault(ref_owner(move[0]) or MAIN, []).append(move)
        found = []
        for where, refs in by_place.items():
            violation = self._refs_moved(where, refs, window)
            if violation is not None:
                found.append(violation)
        return found

    def _read_refs(self) -> dict[str, str]:
        """The watched refs (the remote-tracking ones, read with them, kept for the remotes)."""
        self._remotes.read_at = time.time()
        both = read_refs(self.repo.root, also=(remotes.PREFIX,))
        self._remotes.read = {r: s for r, s in both.items() if r.startswith(remotes.PREFIX)}
        return {r: s for r, s in both.items() if not r.startswith(remotes.PREFIX)}

    def _moved_refs(self, pending: set[str]) -> list[RefMove]:
        # Taken before the read: a branch added after it is taken as found by the next scan.
        with self._repo_lock:
            unread, self._unread = self._unread, set()
        now = self._read = self._read_refs()
        # Without the guard's lock: a task counts as busy from before its branch can move
        # until after its tip is the baseline (see _release).
        busy = set(self._busy)
        for ref in unread:
            self._log(f"{ref}: its tip was not read when its task ended; taken as found")
            self._set_ref(ref, now.get(ref))
        moved: list[RefMove] = []
        for ref in sorted(set(now) | set(self._refs)):
            before, after = self._refs.get(ref), now.get(ref)
            owner = ref_owner(ref)
            mine = owner in busy and owner not in self._pinned
            if mine and before != after and after is not None and owner is not None:
                # Its own agent's move is in its worktree's HEAD reflog (its admin dir, which
                # no sibling can write under --sandbox); another agent's is not, and is judged.
                # Seen first (made by swarm as the task starts): where it starts from.
                mine = before is None or self._moved_by_itself(owner, before, after)
                if mine:
                    self._set_ref(ref, after)  # from here on: a later move is judged from it
            if (
                before == after
                or mine
                or ref in pending
                or self._by_its_checks(owner, before, after)
            ):
                # A task's own branch while it works, or its checks (put back when they end,
                # by its worker); a swarm command at work.
                continue
            if ref == STASH:
                continue  # judged once attempts end: an agent may stash and pop meanwhile
            if owner is not None and self._others is not None and self._others(owner):
                self._set_ref(ref, after)
                continue
            if self._channel.explains(ref, before, after):
                self._set_ref(ref, after)  # moved by swarm merge or clean, as they said
                continue
            # Moved by them and then by someone else (seen together): judged from their end.
            start = self._channel.advance(ref, before)
            if start != before:
                self._set_ref(ref, start)
            moved.append((ref, start, after))
        return moved

    def _by_its_checks(self, owner: str | None, before: str | None, after: str | None) -> bool:
        """Whether a task branch moved in its own worktree while its checks run (theirs).

        One moved from elsewhere meanwhile is judged as anyone's move. (Asked of a move only.)
        """
        if owner not in self._pinned or before is None or after is None:
            return False
        return self._moved_by_itself(owner, before, after)

    def _moved_by_itself(self, task_id: str, before: str, tip: str) -> bool:
        """Whether *task_id*'s branch moved from *before* to *tip* by its own agent alone.

        Git adds each move of the branch a worktree's HEAD names to that HEAD's reflog (a
        commit, a reset, a rebase, an `update-ref` in that worktree); a move made from another
        worktree is not there, and breaks the chain of its moves. The chain may run past
        *tip* (the task moved on after the tip was read: its next commit, swarm's checkpoint):
        then the branch's own reflog says which move brought it to *tip*, and that move must be
        one of the chain's (a sibling setting it back to a commit of the chain is not). With no
        reflog to read (`core.logAllRefUpdates` off, a worktree not as swarm made it), or its
        HEAD not on the branch (detached: its own `git branch -f` is not in that reflog),
        there is no telling: taken as its own.
        """
        path = self._trees.paths.get(task_id)
        admin = None if path is None else tampering.own_admin(self.repo, path)
        if admin is None or not self._reflogs_kept:
            return True
        try:
            on_branch = (admin / "HEAD").read_bytes().strip() == (
                f"ref: refs/heads/swarm/{task_id}".encode()
            )
        except OSError:
            on_branch = False
        if not on_branch:
            return True
        try:
            lines = _reflog_tail(admin / "logs" / "HEAD")
        except FileNotFoundError:
            return False  # made by its first move of its own: none yet
        except OSError:
            return True
        at, seen = before.encode("ascii"), tip.encode("ascii")
        moves: set[tuple[bytes, bytes]] = set()
        for line in lines:  # old, new, who, when<TAB>why: each move from where the last left it
            old, _, rest = line.partition(b" ")
            if old == at:
                at = rest.partition(b" ")[0]
                moves.add((old, at))
        if at == seen:
            return True
        if seen not in {new for _, new in moves}:
            return False
        last = _last_move_to(self.repo.common_dir / "logs/refs/heads/swarm" / task_id, seen)
        return last is None or last in moves  # None: no telling

    @functools.cached_property
    def _reflogs_kept(self) -> bool:
        """Whether git keeps reflogs here (``core.logAllRefUpdates``, true unless set off)."""
        said = runner.run(self.repo.root, "config", "core.logAllRefUpdates", check=False)
        return said.stdout.strip().lower() not in {"false", "no", "off", "0"}

    def _scan_stash(self, began: float, after: str | None) -> list[Violation]:
        """``refs/stash`` is shared by all worktrees: left moved after an attempt, it is a write.

        *after*: its value as just read.
        """
        window = (self._stash_checked, began)
        self._stash_checked = began
        before = self._refs.get(STASH)
        if before == after:
            return []
        if self._channel.explains(STASH, before, after):
            self._set_ref(STASH, after)
            return []
        violation = self._refs_moved(MAIN, [(STASH, before, after)], window)
        return [] if violation is None else [violation]

    def _check_remotes(
        self, pending: set[str], *, settle: bool, refs: dict[str, str] | None = None
    ) -> None:
        """Remote-tracking refs and their reflogs: moved by an agent, put back when *settle*.

        An agent's `git fetch` and a forged ref or reflog line look the same: put back, with a
        note, once an attempt ends (*settle*) and at the end, never blamed. Moved while no
        agent ran, they are the user's: the new baseline. swarm's announced moves (`swarm
        pr`'s push) are taken as they are.

        The agents that ran from when they were last found as their baseline until they were
        read now are the suspects: one that began within this very scan is one too.
        """
        root, common = self.repo.root, self.repo.common_dir
        # As found when *refs* were read: a move after that is the next look's to judge.
        looked = time.time() if refs is None else self._remotes.read_at
        if self._remotes.base is None:  # its first read failed
            self._remotes.base = remotes.read(root, common, data=True)
            self._remotes.seen = looked
            return
        # The periodic look compares reflogs by their stat data; once an attempt ends, by bytes.
        base, now = self._remotes.base, remotes.read(root, common, data=settle, refs=refs)
        window = (self._remotes.seen, time.time())
        changed = remotes.moved(base, now)
        taken = [
            ref for ref in changed
            if base.refs.get(ref) != now.refs.get(ref)
            and self._channel.explains(ref, base.refs.get(ref), now.refs.get(ref))
        ]  # fmt: skip
        settled = not pending & set(changed)  # no swarm command moving them now
        if not self._agents.suspects(window, exclude=()) or (settle and not self.restore):
            # Moved while no agent ran: the user's own fetch (or outside writes are allowed).
            taken = [ref for ref in changed if ref not in pending]
        if taken:
            if now.data is None:
                now = remotes.read(root, common, data=True)
            base = self._remotes.base = remotes.adopt(base, now, taken)
            changed = [ref for ref in changed if ref not in taken]
        if not changed or not settle:  # an agent's move is judged once an attempt ends
            if settle:  # reflogs with their bytes as they were: their stat data anew
                self._remotes.base = remotes.restamped(base, now)
            if not changed and settled:
                self._remotes.seen = looked
            return
        going = [ref for ref in changed if ref not in pending]
        noted = self._dir / REMOTES_NOTE  # a manager killed half-way: the next one finishes
        remotes.note_put_back(noted, base, now, going)
        try:
            left = remotes.put_back(root, common, base, going)
        finally:
            noted.unlink()
        self._remotes.base = remotes.restamped(base, remotes.read(root, common, data=True))
        if going:
            note = remotes.Note(refs=tuple(r for r in going if r not in left), left=tuple(left))
            self._log(f"remote-tracking refs put back: {list(note.refs)}, left: {list(left)}")
            with self._new_lock:
                self._remotes.notes.append(note)
        if not left and settled:
            self._remotes.seen = looked

    def _set_ref(self, ref: str, value: str | None) -> None:
        if value is None:
            self._refs.pop(ref, None)
        else:
            self._refs[ref] = value

    def _refs_moved(
        self,
        where: str,
        refs: list[RefMove],
        window: tuple[float, float],
    ) -> Violation | None:
        exclude = () if where == MAIN else (where,)
        evidence = {self._evidence.pop(r, "") for r, _, _ in refs} - {""}
        suspects = (
            tuple(sorted(evidence))
            or self._announced_by(refs)
            or tuple(
                sorted(
                    {
                        *self._agents.suspects(window, exclude=exclude),
                        *self._channel.named(refs),
                    }
                )
            )
        )
        patch = "".join(ref_patch(self.repo.root, r, b, a) for r, b, a in refs)
        found = Violation(number=0, where=where, refs=tuple(refs), suspects=suspects)
        restored = False
        if suspects and self.restore:
            found = self._intend(found, patch)
            # Kept first: a manager killed in the put-back loses none of them.
            self._keep_undone(undone_commits(self.repo.root, refs), found)
            restored = self._put_back_refs(refs)
        if not restored:
            for r, _, a in refs:
                self._set_ref(r, a)
        if not suspects:
            return None  # moved while no agent ran: the user's own doing, not ours to undo
        return self._record(dataclasses.replace(found, restored=restored), patch_text=patch)

    def _announced_by(self, refs: list[RefMove]) -> tuple[str, ...]:
        """The tasks whose agents announced exactly *refs*' moves (their `swarm merge`), if so.

        Their announcement was refused (an agent's is never believed), yet once done it says
        whose the moves are: the agents running beside them did not make them. Read again if
        need be: it may have been finished after this scan read the announcements.
        """
        found = self._channel.blame(refs)
        if not found:
            self._hear()
            found = self._channel.blame(refs)
        return found

    def _keep_undone(self, commits: list[str], found: Violation) -> None:
        """Keep *commits* a put-back took off refs (your stash, a branch made meanwhile).

        Under ``refs/swarm/undone/``, watched from now on like your branches, and named at
        the end of *found*'s patch.
        """
        if not commits:
            return
        kept = keep_undone(self.repo.root, commits)
        for name, commit in kept:
            self._set_ref(name, commit)
        if found.patch and kept:
            with contextlib.suppress(OSError), Path(found.patch).open("a") as fh:
                fh.writelines(f"# kept: {name}\n" for name, _ in kept)

    def _put_back_refs(self, refs: list[RefMove]) -> bool:
        """Move each of *refs* back; whether all are back.

        A ref deleted together with its tip object cannot point at it again until the kept
        pack is back in the object store: that is put back first, and those refs tried again.
        """
        left = [m for m in refs if not restore_ref(self.repo.root, *m)]
        if not left:
            return True
        with contextlib.suppress(OSError):
            integrity.recover(self.repo.common_dir, self._dir / "keep")
        return all(restore_ref(self.repo.root, *m) for m in left)

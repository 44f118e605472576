"""The guard's checks when an attempt ends, before swarm runs git in the task's worktree.

A task's HEAD its agent switched elsewhere, its branch its checks moved, its worktree removed
or moved while it was busy: each is put back. Then git's own files, ``refs/stash``, the
remote-tracking refs and every ref's objects are checked, once for workers whose attempts end
together; a deep scan (watcher.py) runs these last checks too.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.git import gitfiles
from worktree_swarm.git import repo as git
from worktree_swarm.guard.model import REPOSITORY, Violation, short_ref
from worktree_swarm.guard.ref_checks import STASH
from worktree_swarm.guard.snapshot import index_path, symbolic_head
from worktree_swarm.guard.unwatched_checks import UnwatchedChecks
from worktree_swarm.infra import fs

REMOTES = "remote refs"  # the job that checks the remote-tracking refs


class AttemptChecks(UnwatchedChecks):
    """The checks after an attempt: the task's HEAD, branch and worktree, then git's files."""

    def own_head(self, task_id: str, path: Path, branch: str) -> Violation | None:
        """Put *path*'s HEAD back on *branch* if its agent switched it elsewhere.

        Called after each attempt, before the checkpoint, so the checkpoint lands on the
        task's branch. The ref HEAD was on is remembered as evidence for :meth:`scan`.
        """
        want = f"refs/heads/{branch}"
        with contextlib.suppress(OSError, SwarmError):  # the fast way: read the HEAD file
            if fs.read_file(index_path(path).parent / "HEAD") == f"ref: {want}\n".encode():
                return None
        head_ref = symbolic_head(path)
        if head_ref == want:
            return None
        head = git.rev_parse_in(path, "HEAD")
        # Its own agent, most likely (`git checkout main`, which also logs the move in the
        # admin dir's reflog). A HEAD written without git (no reflog entry since) may be
        # another agent's: every agent alive when that file changed is a suspect then.
        admin = index_path(path).parent
        others: tuple[str, ...] = ()
        with contextlib.suppress(OSError):
            changed_at = (admin / "HEAD").lstat().st_mtime
            try:
                logged_at = (admin / "logs" / "HEAD").lstat().st_mtime
            except FileNotFoundError:
                logged_at = 0.0
            if logged_at < changed_at:
                others = self._agents.alive_around(changed_at, exclude=(task_id,))
        with self._repo_lock:
            if head_ref is not None and not others:
                self._evidence[head_ref] = task_id
            where = short_ref(head_ref) if head_ref else f"a detached HEAD at {(head or '?')[:12]}"
            gitfiles.point_head(path, branch)  # past a HEAD.lock the agent left stale
            who = "its worktree was switched" if others else "its agent switched its worktree"
            return self._record(
                Violation(
                    number=0,
                    where=task_id,
                    head=f"{who} from {branch} to {where}",
                    suspects=(task_id, *others),
                    restored=True,
                ),
                patch_text=None,
            )

    def checks_moved(self, task_id: str, path: Path, branch: str, tip: str) -> str | None:
        """Put *task_id*'s worktree *path* back on *branch* at *tip* if its checks moved them.

        Called inside :meth:`pinned` once the checks ended, the worktree found swarm's: a check
        that commits, resets or switches the worktree left the task done with a branch other
        than the one checked (or none). Reset to *tip*, files too; a commit taken off stays
        in the branch's reflog. A move made from elsewhere is another's, judged on leaving
        :meth:`pinned`. Returns what the checks did, or None.
        """
        want = f"refs/heads/{branch}"
        head_ref = symbolic_head(path)
        with self._repo_lock:
            out = git.git(self.repo.root, "for-each-ref", "--format=%(objectname)", want)
            now = out.strip() or None
            if head_ref == want and now == tip:
                return None
            if (
                head_ref == want
                and now is not None
                and not self._moved_by_itself(task_id, tip, now)
            ):
                return None
            # Past a HEAD.lock or index.lock the checks left stale, as the checkpoint's writes.
            if head_ref != want:
                gitfiles.point_head(path, branch)
            reset = ["reset", "--quiet", "--hard", tip]
            done = gitfiles.past_stale_lock(path, reset)
            if done.returncode != 0:
                raise CommandError(["git", *reset], done.returncode, done.stdout + done.stderr)
            self._refs[want] = tip
        if head_ref != want:
            where = short_ref(head_ref) if head_ref else "a detached HEAD"
            return f"its checks switched its worktree from {branch} to {where}; put back"
        moved = f"to {now[:12]}" if now else "away (deleted)"
        return f"its checks moved {branch} from {tip[:12]} {moved}; put back"

    def worktree_lost(self, task_id: str) -> Violation | None:
        """How *task_id*'s worktree went while the task was busy (removed or moved), if it did.

        Called after each attempt, before swarm runs git in the worktree: a worktree removed
        while its agent worked took the attempt's uncommitted work with it. It is looked for
        now (the scan may not have come yet) and put back as any scan would.
        """
        path = self._trees.paths.get(task_id)
        # The repository's lock alone, as the checks after an attempt: a busy task has no place
        # of the guard's to compare.
        with self._repo_lock:
            if path is not None and not os.path.lexists(path / ".git"):
                with self._job("worktrees"):
                    self._check_worktree(task_id, path, time.time(), set(), at_once=True)
            return self._trees.lost.pop(task_id, None)

    def after_attempt(self) -> None:
        """Check git's own files, ``refs/stash`` and every ref's objects now.

        Called after each attempt, before swarm runs git in the worktree (the checkpoint), so
        that nothing an agent planted runs with swarm's own commands and deleted objects are
        back first. What it finds is handed over by :meth:`drain`, like every violation.

        A check that began after this call covers it (it saw everything the ended attempt
        did): workers whose attempts end together share one check instead of queueing one
        each behind the guard's lock.
        """
        asked = time.monotonic()
        with self._repo_lock:
            if self._settled_from > asked:
                return
            self._settled_checks(time.time())

    def _settled_checks(self, began: float) -> None:
        self._settled_from = time.monotonic()
        with self._job(REPOSITORY):
            self._scan_surface(began, afresh=True)
            self._scan_graph(began)
        refs: dict[str, str] | None = None
        self._remotes.read = None
        with self._job("refs"):
            refs = self._read_refs()
            if self._scan_stash(began, refs.get(STASH)):
                refs = None  # put back: read again
        with self._job(REMOTES):
            self._check_remotes(self._hear(), settle=True, refs=self._remotes.read)
        with self._job("objects"):
            # Not packed here: a finishing task packs its own branch, the periodic scan the
            # commits of agents still at work.
            self._scan_objects(began, deep=True, refs=refs, pack=False)

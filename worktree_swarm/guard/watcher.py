"""The guard itself: baselines, the scan loop, and what it does about each change.

What is watched, against a baseline recorded when watching starts:

- the user's checkout and the user's other linked worktrees: HEAD (branch or commit), the
  staged entries of the index, and the content of every file git would see (tracked and
  untracked, not ignored), captured as a tree object through a private scratch index, so
  the user's own uncommitted edits are part of the baseline and can be put back byte for byte;
- the repository's executable surface: ``config``, ``config.worktree`` files, ``hooks/``, the
  ``core.hooksPath`` directory and ``info/`` (see surface.py);
- every branch and tag, ``refs/stash`` and the guard's kept tips: only a task's own branch may
  move, and only while swarm works on that task; swarm's own commands name their moves
  through the channel (channel.py);
- the remote-tracking refs and their reflogs: put back once an attempt ends, without blame,
  since an agent's `git fetch` moves them too (remotes.py);
- that every watched ref still resolves to a complete commit (integrity.py);
- every task worktree of the run while nothing of its own runs in it (after its task ended,
  or while it waits for a rate limit): any change there was made by someone else;
- that every task worktree is where swarm made it, busy or not: one another agent removed or
  moved is put back (moved back, or made again from its branch), never deleted.

Git compares a checkout only when its cheap change test (changes.py: inotify, stat of its
git files) flags it, or for a slow sweep; the user's checkouts are compared in full by the
last scan. A change is a *violation*. Its suspects are the agents that were alive since the
previous clean scan, narrowed by the changed files' modification times and by which agents'
processes sit in the changed directory (attribution.py). The foreign changes are saved as a
patch under the run's directory and, unless the run allows outside writes, undone
(restore.py). A scan that fails is recorded with its reason (:meth:`Guard.drain_failures`)
and retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner, worktrees
from worktree_swarm.guard import graph, integrity, remotes, surface
from worktree_swarm.guard.channel import worktree_key
from worktree_swarm.guard.model import (
    MAIN,
    REPOSITORY,
    WORKTREE_PREFIX,
    Snapshot,
    Violation,
    short_ref,
)
from worktree_swarm.guard.object_checks import ObjectChecks
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.recovery import _MOVING, _move_back, _moved_to, finish_put_backs
from worktree_swarm.guard.ref_checks import STASH, RefChecks, _tip
from worktree_swarm.guard.restore import open_up, put_index, remove, restore_checkout
from worktree_swarm.guard.snapshot import (
    capture,
    changed_paths,
    describe_head,
    drop_baselines,
    files_patch,
    index_path,
    is_clean,
    read_refs,
    staged_digest,
    status,
    status_field,
    symbolic_head,
)
from worktree_swarm.guard.state import _MIN_INTERVAL, Unwatched, _Place
from worktree_swarm.infra import fs
from worktree_swarm.infra.redact import redact

_SETUID_EVERY = 10.0  # seconds between walks of the git dir for setuid files
# Per periodic scan, task worktrees flagged as changed are compared for at most this long;
# the rest wait for the next scan (oldest first), so the user's checkout and the refs are
# compared every scan however many tasks have finished.
_TASK_BUDGET = 0.25
# The sweep: one place a scan, least recently compared first, is compared with git even
# unflagged (what inotify cannot see: writes through a shared memory map, network file
# systems), at most this share of the time, and only once it was last compared this long ago.
_SWEEP_SHARE = 0.005
_SWEEP_AGE = 30.0
# How often a guard that only listens (a merge's) reads swarm's ref announcements.
_HEAR_INTERVAL = 0.05
REMOTES = "remote refs"  # the job that checks the remote-tracking refs
_MAIN_TREE = "main.tree"  # the tree of your checkout's baseline, for a manager that resumes
UNWATCHED_EVENT = "checkout_changed_unwatched"


class Guard(RefChecks, ObjectChecks):
    """Watches the user's checkouts, the git dir, the refs and idle task worktrees of one run.

    Thread-safe: workers call :meth:`busy`, :meth:`agent_started`, :meth:`agent_ended`,
    :meth:`own_head` and :meth:`after_attempt`; a thread of its own scans periodically; the
    run loop calls :meth:`drain` and :meth:`drain_failures`.
    """

    # The background scans: asked to look at once, and when the last one began (monotonic).
    _asked: threading.Event
    _looked: threading.Condition
    _last_look = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Record the baselines of the user's checkouts, the git dir and every watched ref."""
        with self._lock:
            self._dir.mkdir(parents=True, exist_ok=True)
            for line in finish_put_backs(self.repo, self._dir):  # before the baselines
                self._log(line)
            last = self._last_base()  # of this run's previous manager: one is resumed
            self._watch(MAIN, self.repo.root)
            with self._job(MAIN):  # failing: told, the run goes on
                self._unwatched = self._changed_since(last)
            for path in self._users_worktrees():
                with self._job(_users_label(path)):  # failing: told, the run goes on
                    self._watch(_users_label(path), path)
                    self._linked[path] = git.git_dir(path)
            self._hooks = surface.hooks_path(self.repo.root)
            self._surface = self._read_surface()
            self._setuid = surface.setuid_files(self.repo.common_dir)
            self._graph = graph.fingerprint(self.repo.common_dir)
            self._store = integrity.store_id(self.repo.common_dir)
            self._objects = ObjectWatch(self.repo.common_dir / "objects")
            with self._job("objects"):  # failing, deleted objects of yours cannot come back
                integrity.hold(self.repo.common_dir, self._held)
                self._held_seen = (-1, time.time_ns())  # linking them changed their time
                self._packs = integrity.packs(self.repo.common_dir)
                self._midx = integrity.midx_print(self.repo.common_dir)
                # Runs whose manager died (this one holds the manager lock) need theirs no
                # more: a resume holds afresh, and they would pin what a `git gc` freed.
                # (Compared as files: a symlink to this run's directory names its own too.)
                self._held.mkdir(parents=True, exist_ok=True)
                own = self._held.stat()
                for stale in self._dir.parent.parent.glob(f"*/{self._dir.name}/{integrity.HELD}"):
                    with contextlib.suppress(FileNotFoundError):
                        if not os.path.samestat(stale.stat(), own):
                            integrity.let_go(stale)
            self._refs = read_refs(self.repo.root)
            with self._job(REMOTES):
                self._remotes.base = remotes.read(self.repo.root, self.repo.common_dir, data=True)
            self._channel.started(dict(self._refs))
            self._good = dict(self._refs)
            now = time.time()
            self._refs_checked = self._surface_checked = self._graph_checked = now
            self._objects_checked = self._stash_checked = self._worktrees_checked = now

    @contextlib.contextmanager
    def busy(self, task_id: str, path: Path) -> Iterator[None]:
        """While inside, *task_id*'s worktree and branch are its own to change.

        On leaving (when nothing else holds it busy) the worktree gets a fresh baseline and
        is watched from then on.
        """
        with self._lock:
            self._busy[task_id] = self._busy.get(task_id, 0) + 1
            if self._trees.paths.get(task_id) != path:
                self._trees.real[task_id] = os.path.realpath(path)
            self._trees.paths[task_id] = path
            self._places.pop(task_id, None)
            self._changes.forget(task_id)
        try:
            yield
        finally:
            self._release(task_id, path)

    @contextlib.contextmanager
    def pinned(self, task_id: str, branch: str, tip: str) -> Iterator[None]:
        """While inside, no agent of *task_id* runs: its branch stays at *tip* (its checks).

        A busy task's branch is its own agent's to move. While that agent is not running, a
        move is another agent's write (a commit onto a task whose checks run), reported and
        undone like one on an idle task's branch; it is looked for once more on leaving.
        """
        ref = f"refs/heads/{branch}"
        with self._repo_lock:
            self._pinned.add(task_id)
            self._refs[ref] = tip
        began = time.time()
        try:
            yield
        finally:
            with self._repo_lock:
                with self._job("refs"):
                    out = git.git(self.repo.root, "for-each-ref", "--format=%(objectname)", ref)
                    now = out.strip() or None
                    if self._refs.get(ref) != now:
                        moved = [(ref, self._refs.get(ref), now)]
                        self._refs_moved(task_id, moved, (began, time.time()))
                self._pinned.discard(task_id)

    @contextlib.contextmanager
    def provisioning(self, path: Path) -> Iterator[None]:
        """While inside, swarm makes, remakes or removes the worktree *path* (and its admin dir).

        In a repository with per-worktree config, `git worktree add` copies the checkout's
        ``config.worktree`` (a sparse checkout's settings) into the new admin dir: git's
        doing, not an agent's. Scans meanwhile leave that file, and whether the worktree is
        there, alone; on leaving both are taken into the baseline as they are.
        """
        real = os.path.realpath(path)
        key = f"{real}/.git"  # as its admin dir's `gitdir` names it
        with self._repo_lock:
            self._provisioning.add(key)
        try:
            yield
        finally:
            with self._repo_lock:
                self._provisioning.discard(key)
                common = self.repo.common_dir
                admin: Path | None = None
                with contextlib.suppress(SwarmError):  # its admin dir, as its `.git` names it
                    admin = git.git_dir(path)
                worktrees_dir = Path(os.path.realpath(common / "worktrees"))
                whole = worktrees.own_admin(self.repo, path)
                # Each task's worktree by where it was when the task took it: one look per
                # worktree made, however many tasks the run has had.
                for task_id, known in list(self._trees.real.items()):
                    if known != real:
                        continue
                    # Where swarm left its branch: a later move is its agent's, or judged.
                    branch = f"refs/heads/swarm/{task_id}"
                    self._set_ref(branch, _tip(self.repo, branch))
                    if whole is None:
                        self._trees.admins.pop(task_id, None)
                    else:
                        self._trees.admins[task_id] = whole.name
                if admin is not None and admin.parent == worktrees_dir:
                    label = f"worktrees/{admin.name}/config.worktree"
                    entry = surface.read_one(common, label)
                    if entry is None:
                        self._surface.pop(label, None)
                    else:
                        self._surface[label] = entry

    def _being_made(self, common: Path, labels: Sequence[str]) -> set[str]:
        """The labels of *labels* that are the ``config.worktree`` of a worktree being made."""
        found = set()
        for label in labels:
            parts = label.split("/")
            if len(parts) != 3 or parts[0] != "worktrees" or parts[2] != "config.worktree":  # noqa: PLR2004
                continue
            try:
                named = fs.read_text(common / "worktrees" / parts[1] / "gitdir")
            except (OSError, UnicodeDecodeError):
                continue
            if named.strip() in self._provisioning:
                found.add(label)
        return found

    def _not_worktrees_made(
        self, common: Path, now: surface.Surface, labels: Sequence[str]
    ) -> list[str]:
        """*labels* but git's copies of ``config.worktree`` in linked worktrees made or removed.

        Another process's `git worktree add` (a run's new task, a merge's worktree) copies the
        repository's own ``config.worktree`` into the new admin dir, and `git worktree remove`
        takes the file away with its admin dir: neither can make git run anything the user's
        own settings do not. Those are taken into the baseline as they are. The user's linked
        worktrees are not swarm's to make or remove: theirs are judged as ever.
        """
        users = {os.path.realpath(admin) for admin in self._linked.values()}
        left = []
        for label in labels:
            admin = os.path.realpath(common / label).rpartition("/")[0]
            if admin not in users and surface.worktree_made(common, self._surface, now, label):
                entry = now.get(label)
                if entry is None:
                    self._surface.pop(label, None)
                else:
                    self._surface[label] = entry
            else:
                left.append(label)
        return left

    @contextlib.contextmanager
    def idle(self, task_id: str, path: Path) -> Iterator[None]:
        """Inside :meth:`busy`: a wait during which nothing of the task's own runs.

        Meant for waits for a slot or a rate limit: the worktree is watched meanwhile, and
        leaving checks it at once.
        """
        self._release(task_id, path)
        try:
            yield
        finally:
            with self._lock:
                place = self._places.pop(task_id, None)
                self._changes.forget(task_id)
                if place is not None and place.path.is_dir():
                    with self._job(task_id):
                        self._scan_place(place, time.time(), quick=True)
                self._busy[task_id] = self._busy.get(task_id, 0) + 1

    def agent_started(self, task_id: str, identity: ProcessIdentity) -> None:
        """Note that *task_id*'s agent runs from now on."""
        self._agents.started(task_id, identity)

    def agent_ended(self, task_id: str) -> None:
        """Note that *task_id*'s agent has ended."""
        self._agents.ended(task_id)

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
            git.git(path, "symbolic-ref", "HEAD", want)
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
            if head_ref != want:
                git.git(path, "symbolic-ref", "HEAD", want)
            git.git(path, "reset", "--quiet", "--hard", tip)
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
            self._scan_surface(began)
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

    # -- scanning ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While inside, a thread reads swarm's ref announcements as they come (channel.py).

        For a guard that scans only now and then (a merge's, after each program): another
        command's moves, told and done between two scans, are not taken for an agent's.
        """
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(_HEAR_INTERVAL):
                with self._repo_lock, self._job("ref announcements"):
                    for why in self._channel.read()[1]:
                        self._failed("ref announcements", why)

        with self._channel.listening():
            thread = threading.Thread(target=loop, name="swarm-guard-ears", daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()

    def watch_in_background(self) -> None:
        """Scan everything from a thread of its own until :meth:`close`."""
        self._asked, self._looked = threading.Event(), threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="swarm-guard", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background scans (a last :meth:`scan` is the caller's to make).

        That last scan compares the user's checkouts in full and the task worktrees flagged
        as changed, then releases the change detector.
        """
        self._closing.set()
        if self._thread is not None:
            self._asked.set()
            self._thread.join()

    def look_now(self, *, timeout: float = 60.0) -> None:
        """Have the background scans look now, and wait until one that began since has ended.

        For a verdict on what a task did before it counts as done: the next scan may be a
        second or more away, and the task's dependents start once it is done.
        """
        if self._thread is None or not self._thread.is_alive():
            return
        asked = time.monotonic()
        self._asked.set()
        with self._looked:
            self._looked.wait_for(
                lambda: self._last_look >= asked or not self._alive(), timeout=timeout
            )

    def _alive(self) -> bool:
        """Whether the background scans go on (not closing, their thread not gone)."""
        return not self._closing.is_set() and self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._closing.is_set():
                self._asked.wait(self._interval)
                if self._closing.is_set():
                    break
                self._asked.clear()
                began = time.monotonic()
                try:
                    with self._job("scan"):
                        self.scan()
                finally:  # a scan that raised is a look too: no one waits for ever
                    with self._looked:
                        self._last_look = began
                        self._looked.notify_all()
        finally:
            with self._looked:
                self._looked.notify_all()

    def scan(self, *, deep: bool = False) -> list[Violation]:
        """Compare what is watched with its baseline; handle and return new violations.

        *deep* also walks every object task branches added (as after each attempt). The
        user's checkouts are compared with git when flagged as changed (changes.py); the
        last scan, after :meth:`close` or with *deep*, compares them in full. Task
        worktrees are compared only when flagged, within a time budget except in that last
        scan.
        """
        final = deep or self._closing.is_set()
        found: list[Violation] = []
        began = time.time()
        # The repository first (its own lock: the workers' hand-overs do not wait for it).
        with self._repo_lock:
            pending: set[str] = set()
            with self._job("ref announcements"):
                pending, refused = self._channel.read()
                for why in refused:
                    self._failed("ref announcements", why)
            # The git dir first: undoing an `info/exclude` entry shows the files it hid.
            with self._job(REPOSITORY):
                found += self._scan_surface(began)
                found += self._scan_graph(began)
                if final or time.monotonic() >= self._setuid_due:
                    found += self._scan_setuid(began)
                    self._setuid_due = time.monotonic() + _SETUID_EVERY
            refs: dict[str, str] | None = None
            self._remotes.read = None
            with self._job("refs"):
                moved = self._scan_refs(began, pending)
                found += moved
                refs = None if moved else self._read  # as read: nothing was put back
            with self._job(REMOTES):
                self._check_remotes(pending, settle=False, refs=self._remotes.read)
            with self._job("objects"):
                found += self._scan_objects(began, deep=False, refs=refs)
            if deep:
                self._settled_checks(began)
        with self._lock.first():  # ahead of the workers: the checks below never wait long
            with self._repo_lock, self._job("worktrees"):
                self._follow_linked()
                # Before your checkout: a worktree moved into it goes back, not away.
                found += self._scan_worktrees(began, pending)
            changed = self._changes.changed()
            for place in self._places.values():
                if place.where not in changed and self._changes.watched(place.where):
                    place.seen = began  # untouched until the events were read, after *began*
            sweep = None if final else self._sweep_pick()
            compared = time.monotonic()
            for place in [p for p in self._places.values() if p.users]:
                flagged = final or place.where in changed
                if flagged or place is sweep:
                    found += self._compare(place, began, quick=False, sweep=not flagged)
            users = time.monotonic() - compared
            places = [p for p in self._places.values() if not p.users]
        found += self._scan_tasks(places, changed, sweep, final=final)
        if final and self._closing.is_set():
            self._changes.close()  # the last scan: its events are of no use any more
            if self._objects is not None:
                self._objects.close()
            with self._job("objects"):
                integrity.recover_held(self.repo.root, self.repo.common_dir, self._held)
            integrity.let_go(self._held)
        # Only comparing the user's checkouts in full can take long (a huge checkout that keeps
        # changing, or without inotify): the pause keeps that under a tenth of the time. The
        # rest of a scan is cheap, and flagged task worktrees have their budget.
        self._interval = max(_MIN_INTERVAL, 10 * users)
        return found

    def _scan_tasks(
        self, places: list[_Place], changed: set[str], sweep: _Place | None, *, final: bool
    ) -> list[Violation]:
        """Compare the task worktrees flagged as changed (and the sweep's), oldest first."""
        found: list[Violation] = []
        places.sort(key=lambda p: p.compared)
        budget = None if final else time.monotonic() + _TASK_BUDGET
        for place in places:  # one at a time, so workers are not held up by a long scan
            flagged = place.where in changed
            if not flagged and place is not sweep:
                continue
            if budget is not None and time.monotonic() > budget:
                if flagged:
                    self._changes.mark(place.where)  # compared in a later scan
                continue
            with self._lock.first():
                if self._places.get(place.where) is not place:
                    continue
                if not place.path.is_dir():
                    del self._places[place.where]  # removed; its work is on its branch
                    self._changes.forget(place.where)
                    _drop_copies(place)
                    continue
                found += self._compare(place, time.time(), quick=True, sweep=not flagged)
        return found

    def _sweep_pick(self) -> _Place | None:
        """The place to compare unflagged this scan, if the sweep's share of time allows."""
        now = time.monotonic()
        if now < self._sweep_at or not self._places:
            return None
        place = min(self._places.values(), key=lambda p: p.compared)
        return place if now - place.compared >= _SWEEP_AGE else None

    def _compare(self, place: _Place, began: float, *, quick: bool, sweep: bool) -> list[Violation]:
        """Compare *place* with git (a failure is recorded and flags it for the next scan).

        A *sweep* step compares a place nothing flagged; flagged, even an unchanged `git
        status` of a task worktree is not trusted where its baseline had uncommitted files.
        """
        started = time.monotonic()
        found: list[Violation] = []
        ok = False
        # A change the test flagged was made after it last found the place untouched; one only
        # git sees, since git last compared it.
        since = place.checked if sweep else max(place.checked, place.seen)
        with self._job(place.where):
            found = self._scan_place(place, began, quick=quick, thorough=not sweep, since=since)
            ok = True
        if not ok and place.users and self.restore and _unreadable_index(place.path):
            # Your index, written unreadable (every git command of yours fails on it): the
            # one saved at the baseline goes back, and the place is compared as usual.
            window = (since, began)
            with self._job(place.where):
                if put_index(place.path, place.saved_index):
                    suspects = self._agents.suspects(window, exclude=())
                    broken = Violation(
                        number=0, where=place.where, index_changed=True, suspects=suspects,
                        restored=True,
                    )  # fmt: skip
                    found = [self._record(broken, patch_text=None)]
                    found += self._scan_place(place, began, quick=False, since=since)
                    ok = True
        removing = not ok and place.where.startswith(WORKTREE_PREFIX) and self._removing(place.path)
        if not (ok or removing) and self.restore and place.where in self._denied:
            # Files or directories made unreadable to you (`chmod 000`): your git fails there
            # as the comparison did. The owner's bits go back, and the place is compared.
            window = (since, began)
            with self._job(place.where):
                found, ok = self._opened_up(place, window), True
        if not ok and place.users and self._closing.is_set() and not removing:
            # The run's last look at a checkout of yours failed: what the agents did there
            # since it was last compared is unknown. (A failure before it changes nothing:
            # every comparison is with the baseline, so a later one sees what it missed.)
            found = [self._unchecked(place, began)]
        if not ok:
            self._changes.mark(place.where)
        place.compared = done = time.monotonic()
        if sweep:  # the next sweep step waits for the sweep's share of time
            self._sweep_at = done + (done - started) / _SWEEP_SHARE
        return found

    def _opened_up(self, place: _Place, window: tuple[float, float]) -> list[Violation]:
        """The paths of *place* an agent made unreadable to you, given back to you.

        None, or no agent to blame: the comparison's failure stands (raised again).
        """
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        opened = open_up(place.path, self._base(place).tree) if suspects else []
        if not opened:
            raise SwarmError(self._failing.get(place.where, "the comparison failed"))
        patch = "".join(f"# {p}: unreadable to you; the owner's permission bits given back\n"
                        for p in opened)  # fmt: skip
        broken = Violation(
            number=0, where=place.where, paths=tuple(opened), suspects=suspects, restored=True
        )
        found = [self._record(broken, patch_text=patch)]
        return found + self._scan_place(place, window[1], quick=False, since=window[0])

    def _unchecked(self, place: _Place, began: float) -> Violation:
        """Every agent that ran since *place* was last compared, not vouched for."""
        why = self._failing.get(place.where, "the comparison failed")
        suspects = self._agents.suspects((place.checked, began), exclude=())
        violation = Violation(number=0, where=place.where, suspects=suspects, unchecked=why)
        return self._record(violation, patch_text=None)

    # -- internals ---------------------------------------------------------------------------

    def _read_surface(self) -> surface.Surface:
        tops = list(self._trees.paths.values())  # a copy: workers add to it meanwhile
        return surface.read(self.repo.common_dir, self._hooks, self._linked, tops)

    def _users_worktrees(self) -> list[Path]:
        """The user's linked worktrees: not the main one, not swarm's (its roots, its branches)."""
        found = []
        for info in worktrees.list_worktrees(self.repo):
            real = Path(os.path.realpath(info.path))
            if info.is_main or info.prunable or not info.path.is_dir():
                continue
            if any(real.is_relative_to(r) for r in self._roots):
                continue
            if (info.branch or "").startswith("swarm/"):
                continue
            found.append(info.path)
        return found

    def _scan_worktrees(self, began: float, pending: set[str]) -> list[Violation]:
        """Each task worktree where swarm made it: one removed or moved is put back.

        Two file lookups per task; git's admin dir is read only when a worktree's ``.git`` is
        gone. Under the guard's lock and the repository's.
        """
        found = []
        for task_id, path in list(self._trees.paths.items()):
            violation = self._check_worktree(task_id, path, began, pending)
            if violation is not None:
                found.append(violation)
        self._worktrees_checked = began
        return found

    def _check_worktree(
        self, task_id: str, path: Path, began: float, pending: set[str], *, at_once: bool = False
    ) -> Violation | None:
        known = self._trees.admins.get(task_id)
        if _present(path / ".git"):
            self._trees.doubted.discard(task_id)
            if known is None:  # made by an earlier manager, or not yet seen whole
                admin = worktrees.own_admin(self.repo, path)
                if admin is not None:
                    self._trees.admins[task_id] = admin.name
            return None  # a `.git` that names another is tampering: see worktrees.tampered
        if known is None or f"{os.path.realpath(path)}/.git" in self._provisioning:
            return None
        key = worktree_key(path)
        if key in pending:
            return None  # `swarm clean` at work
        if not self._channel.explains(key, known, None):
            # swarm names a removal before it begins: one that began since the scan read the
            # announcements is named by now.
            if key in self._hear():
                return None
            if not self._channel.explains(key, known, None):
                if not at_once and self._midway(task_id, path, known):
                    return None  # judged on the next scan
                return self._worktree_gone(task_id, path, known, began)
        self._forget_worktree(task_id)  # removed by `swarm clean`, as it said
        return None

    def _midway(self, task_id: str, path: Path, known: str) -> bool:
        """Whether to look at *task_id*'s missing worktree once more before judging.

        git moves a worktree by renaming it, then writes its new place into the admin dir: one
        found gone while its admin dir still names *path* is looked at on the next scan too,
        once (the final scan judges at once).
        """
        gitdir = self.repo.common_dir / "worktrees" / known / "gitdir"
        try:
            named = fs.read_text(gitdir).strip()
        except (OSError, UnicodeDecodeError):
            return False
        if os.path.realpath(Path(named).parent) != os.path.realpath(path):
            return False
        if task_id in self._trees.doubted or self._closing.is_set():
            self._trees.doubted.discard(task_id)
            return False
        self._trees.doubted.add(task_id)
        return True

    def _worktree_gone(
        self, task_id: str, path: Path, known: str, began: float
    ) -> Violation | None:
        """*task_id*'s worktree, registered in admin dir *known*, is not at *path*: whose doing."""
        window = (self._worktrees_checked, began)
        busy = task_id in self._busy
        suspects = self._agents.suspects(window, exclude=(task_id,))
        if not suspects and busy:  # its own agent, alone at the time
            suspects = self._agents.suspects(window, exclude=())
        if not suspects:  # nobody of ours was running: the user's doing
            self._forget_worktree(task_id)
            return None
        moved = _moved_to(self.repo.common_dir / "worktrees" / known, path)
        what = "was removed" if moved is None else f"was moved to {moved}"
        found = Violation(number=0, where=task_id, worktree=what, suspects=suspects)
        restored = False
        if self.restore:
            found = self._intend(found, None, worktree=path)
            with self._job(task_id):
                restored = self._put_worktree_back(task_id, path, known, moved)
        if not restored:
            self._forget_worktree(task_id)
            if moved is not None:
                self._keep_out(moved)
        violation = self._record(dataclasses.replace(found, restored=restored), patch_text=None)
        if busy and not (moved is not None and restored):  # its agent's files went with it
            self._trees.lost[task_id] = violation
        return violation

    def _keep_out(self, moved: Path) -> None:
        """Leave *moved*, a task worktree left in your checkout, out of its comparisons."""
        root, real = Path(os.path.realpath(self.repo.root)), Path(os.path.realpath(moved))
        if real != root and real.is_relative_to(root):
            self._exclude += (f":(exclude,top,literal){real.relative_to(root).as_posix()}",)

    def _forget_worktree(self, task_id: str) -> None:
        """No longer expect *task_id*'s worktree where swarm made it, nor compare it there."""
        self._trees.admins.pop(task_id, None)
        place = self._places.pop(task_id, None)
        if place is not None:
            self._changes.forget(task_id)
            _drop_copies(place)

    def _put_worktree_back(self, task_id: str, path: Path, admin: str, moved: Path | None) -> bool:
        """Move *path* back from *moved*, or make it again from its branch; whether it is back.

        Nothing is deleted: a worktree that cannot be moved back (a submodule in it, another
        file system) stays where it was moved, and *path*, when something else is there now,
        is not made again. A finished task's worktree made again gets back the files it held
        uncommitted (its baseline), and is compared with its baseline again.
        """
        if moved is not None:
            if os.path.lexists(path):
                return False  # something else is there now (git would move it inside that)
            # Noted first: a manager killed before the move is done has the next one finish it.
            note = self._dir / _MOVING / admin
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(json.dumps([str(moved), str(path)]), encoding="utf-8")
            try:
                _move_back(self.repo, moved, path)
            finally:
                note.unlink()
        else:
            with self.provisioning(path), git.repo_lock(self.repo):
                stale = self.repo.common_dir / "worktrees" / admin
                if os.path.lexists(stale / "gitdir"):  # its files deleted, its registration not
                    shutil.rmtree(stale)
                with contextlib.suppress(FileNotFoundError):
                    path.rmdir()  # left empty; not empty, it is not ours to clear
                branch = f"swarm/{task_id}"
                git.git(self.repo.root, "worktree", "add", "--quiet", "--no-checkout", "--",
                        str(path), branch)  # fmt: skip
                worktrees.populate(path, None)
        place = self._places.get(task_id)
        if place is not None:
            if moved is None:
                _seed(place.scratch, place.saved_index)
                now = capture(path, place.scratch)
                restore_checkout(
                    path,
                    base=self._base(place),
                    now=now,
                    saved_index=place.saved_index,
                    scratch=place.scratch,
                    exclude=(),
                )
            self._changes.forget(task_id)
            self._changes.watch(task_id, path, self._git_files(index_path(path).parent))
            self._changes.mark(task_id)  # compared with its baseline in this scan
        return worktrees.own_admin(self.repo, path) is not None

    def _release(self, task_id: str, path: Path) -> None:
        """One holder less; the last one hands the worktree over to the guard's watch.

        The baseline (git's status of the worktree, a capture when it has uncommitted files)
        and the pack of the branch's work are made outside the guard's lock, the task still
        counted busy meanwhile; only the hand-over itself holds the lock, so finishing tasks
        do not queue behind each other's git commands.
        """
        with self._lock:
            if self._busy[task_id] > 1:
                self._busy[task_id] -= 1
                return
        branch = f"refs/heads/swarm/{task_id}"
        place = tip = None
        # A worktree an agent replaced (a symlink, a `.git` naming another) is no baseline.
        if path.is_dir() and worktrees.tampered(self.repo, path) is None:
            with self._job(task_id):  # failing, it is unwatched (and told), the branch is not
                place = self._baseline(task_id, path)
                if status_field(place.status, "head") == branch.removeprefix("refs/heads/"):
                    tip = status_field(place.status, "oid")
        read = tip is not None
        if not read:
            with self._job("refs"):  # not rev-parse: the tip's object may be missing
                out = git.git(self.repo.root, "for-each-ref", "--format=%(objectname)", branch)
                tip = out.strip() or None
                read = True
        if not read:  # no baseline: never a move of the guard's own making to undo
            with self._repo_lock:
                self._unread.add(branch)
        if tip is not None:
            with self._repo_lock:
                refs = {**self._refs, branch: tip}
            with self._job("objects"):  # the task's work, safe from deleted objects from now
                self._keep_task_work(refs, self._dir / "keep", only=branch)
            with self._repo_lock:  # before it stops counting as busy: the refs scan's baseline
                self._refs[branch] = tip
        with self._lock:
            self._busy[task_id] -= 1
            if self._busy[task_id]:  # taken again meanwhile: its new holder hands it over
                self._changes.forget(task_id)
                return
            del self._busy[task_id]
            if place is not None:
                self._places[task_id] = place

    def _watch(self, where: str, path: Path) -> None:
        self._places[where] = self._baseline(where, path)
        if where == MAIN and self._resumable:
            self._keep_base()

    def _keep_base(self) -> None:
        """Record the tree of your checkout's baseline for the manager that resumes the run."""
        place = self._places.get(MAIN)
        if place is not None and place.base is not None:
            with contextlib.suppress(OSError):  # a torn one reads as none
                (self._dir / _MAIN_TREE).write_text(place.base.tree, encoding="ascii")

    def keep_base_for_resume(self) -> None:
        """A run's guard (not a merge's): its baseline of your checkout is kept from now on.

        Called once what :meth:`unwatched` found is on record: a manager killed before that
        leaves the previous baseline, and the next one finds the same changes again.
        """
        self._resumable = True
        self._keep_base()

    def _last_base(self) -> str | None:
        """The tree of your checkout as the run's last manager last took it as its baseline."""
        try:
            text = fs.read_text(self._dir / _MAIN_TREE).strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", text) else None

    def _changed_since(self, last: str | None) -> Unwatched | None:
        """What changed in your checkout from *last* to the baseline just taken.

        A resumed run: what changed while no manager watched (yours, or an agent's write its
        manager was killed before it looked at), kept as it is, told, its patch kept.
        """
        place = self._places[MAIN]
        if last is None or place.base is None or last == place.base.tree:
            return None
        compared = runner.run_bytes(
            self.repo.root, "diff-tree", "-r", "--name-only", "-z", "--no-renames", last,
            place.base.tree, check=False,
        )  # fmt: skip
        if compared.returncode != 0:  # its tree pruned since: nothing to compare with
            return None
        paths = [os.fsdecode(p) for p in compared.stdout.split(b"\0") if p]
        if not paths:
            return None
        number = 1 + len(list(self._dir.glob("unwatched-*-main.patch")))
        patch = self._dir / f"unwatched-{number}-main.patch"  # an earlier one's stays as told
        text = files_patch(place.path, last, place.base.tree, paths)
        # As an outside write's patch: your credentials stay out, names keep their bytes.
        patch.write_text(redact(text), encoding="utf-8", errors="surrogateescape")
        self._log(f"changed while no manager watched: {', '.join(paths)} (patch {patch})")
        return Unwatched(paths=tuple(paths), patch=str(patch))

    def looked_last(self) -> None:
        """After the run's last scan: what changes in your checkout from now on is yours."""
        with contextlib.suppress(OSError):
            (self._dir / _MAIN_TREE).unlink(missing_ok=True)
        drop_baselines(self._dir)

    def unwatched(self) -> Unwatched | None:
        """What :meth:`start` found changed in your checkout while no manager watched it."""
        return self._unwatched

    def _baseline(self, where: str, path: Path) -> _Place:
        """Watch *path* from now on and record its baseline (no lock needed: *where* is its own)."""
        if where == MAIN:
            name = "main"
        elif where.startswith(WORKTREE_PREFIX):
            name = "worktree-" + hashlib.sha256(where.encode()).hexdigest()[:12]
        else:
            name = f"task-{where}"
        scratch = self._dir / f"{name}.scratch-index"
        saved = self._dir / f"{name}.index"
        real = index_path(path)
        # Watched before git looks: a change made while it does is flagged for the next scan.
        users = where == MAIN or where.startswith(WORKTREE_PREFIX)
        self._changes.watch(
            where,
            path,
            self._git_files(real.parent),
            skip=self._roots if where == MAIN else (),
            unignored=users,
        )
        scratch.unlink(missing_ok=True)
        # A manager killed while git wrote it leaves git's lock; the file is this manager's own.
        scratch.with_name(scratch.name + ".lock").unlink(missing_ok=True)
        if real.is_file():
            shutil.copyfile(real, saved)
        else:
            saved.unlink(missing_ok=True)
        began = time.time()
        # The user's checkouts are always compared in full; a task worktree first by status.
        place_status = "" if users else status(path)
        base = None
        dirs: list[str] = []
        if users or not is_clean(place_status):
            _seed(scratch, saved)
            base = capture(path, scratch, self._exclude if where == MAIN else ())
        if users and base is not None:
            out = git.git(path, "ls-tree", "-r", "-d", "-z", "--name-only", base.tree)
            dirs = [d for d in out.split("\0") if d]
        return _Place(
            where=where,
            path=path,
            scratch=scratch,
            saved_index=saved,
            base=base,
            checked=began,
            status=place_status,
            compared=time.monotonic(),
            dirs=tuple(dirs),
            repos=frozenset(_repositories_in(path, dirs)),
        )

    def _git_files(self, admin: Path) -> list[Path]:
        """The files whose stat tells that a checkout's index, HEAD or HEAD's branch moved."""
        common = self.repo.common_dir
        files = [admin / "index", admin / "HEAD", common / "packed-refs"]
        with contextlib.suppress(OSError, UnicodeDecodeError):
            head = fs.read_text(admin / "HEAD")
            ref = head.removeprefix("ref: ").strip()
            if head.startswith("ref: refs/") and ".." not in ref:
                files.append(common / ref)  # a loose ref; packed, it is packed-refs
        return files

    def _gone_linked(self) -> list[tuple[Path, Path, Path | None]]:
        """Your linked worktrees no longer where they were: checkout, admin dir, new place.

        Removed whole (`git worktree remove`: its `.git` and its admin dir gone; no new place)
        or moved whole (`git worktree move`: its admin dir names the new place, whose `.git`
        names the admin dir back).
        """
        gone: list[tuple[Path, Path, Path | None]] = []
        for checkout, admin in self._linked.items():
            if os.path.lexists(checkout / ".git"):
                continue
            if not os.path.lexists(admin):
                gone.append((checkout, admin, None))
            elif (moved := _moved_to(admin, checkout)) is not None:
                gone.append((checkout, admin, moved))
        return gone

    def _removing(self, checkout: Path) -> bool:
        """Whether git is removing your linked worktree *checkout*, or just removed it."""
        if _being_removed(checkout):
            return True
        admin = self._linked.get(checkout)  # looked at after: a removal that ended meanwhile
        return admin is not None and not os.path.lexists(admin)

    def _follow_linked(self) -> None:
        """Watch your linked worktrees removed whole no more, moved ones where they are now.

        Under both locks. Most likely your own `git worktree remove` or `move`; nothing of a
        removed one could be put back but its ties to the repository, which would leave a
        worktree of one `.git` file, and writing a moved one's ties back would have its
        registration name a directory of that one file.
        """
        common = self.repo.common_dir
        for checkout, admin, moved in self._gone_linked():
            del self._linked[checkout]
            for label in surface.ties(common, checkout, admin):
                self._surface.pop(label, None)
            where = _users_label(checkout)
            if self._places.pop(where, None) is not None:
                self._changes.forget(where)
            if moved is None:
                self._log(f"your worktree {checkout} was removed: no longer watched")
                continue
            self._linked[moved] = admin
            for label in surface.ties(common, moved, admin):
                entry = surface.read_one(common, label)
                if entry is not None:
                    self._surface[label] = entry
            self._keep_out(moved)  # moved into your checkout: not new files of it
            with self._job(_users_label(moved)):
                self._watch(_users_label(moved), moved)
            self._log(f"your worktree {checkout} was moved to {moved}: watched there")

    def _not_ties_settling(self, labels: list[str]) -> list[str]:
        """*labels* less the ties of your linked worktrees that git moves or removes.

        Those removed or moved whole are followed from the next scan; those your `git worktree
        remove` is removing are judged once it is done.
        """
        common = self.repo.common_dir
        skip = {
            t for old, admin, _ in self._gone_linked() for t in surface.ties(common, old, admin)
        }
        for checkout, admin in list(self._linked.items()):
            ties = surface.ties(common, checkout, admin)
            if set(labels) & ties - skip and self._removing(checkout):
                skip |= ties
        return [label for label in labels if label not in skip]

    def _scan_surface(self, began: float) -> list[Violation]:
        common = self.repo.common_dir
        swapped = self._swapped_store(began)  # first: the surface's objects/info is in it
        self._put_back_again()
        now = self._read_surface()
        # Owed ones still not back (their writer at it again) were reported: not once a scan.
        labels = [x for x in surface.changed(self._surface, now) if x not in self._unrestored]
        if labels:
            labels = self._not_ties_settling(labels)
        if labels and self._provisioning:  # git's own writes into admin dirs being made
            skip = self._being_made(common, labels)
            labels = [label for label in labels if label not in skip]
        if labels:  # another swarm command's (or git's) worktrees, made or removed meanwhile
            labels = self._not_worktrees_made(common, now, labels)
        if surface.RERERE in labels and surface.rerere_made(self.repo.root, self._surface, now):
            labels.remove(surface.RERERE)  # git's own doing, and changes nothing: the baseline
            self._surface[surface.RERERE] = now[surface.RERERE]
        window = (self._surface_checked, began)
        if not labels:
            self._surface_checked = began
            return swapped
        self._changes.mark_all()  # `info/exclude` or the config may change what git sees
        suspects = self._agents.suspects(window, exclude=())
        suspects = self._agents.narrow(suspects, common, labels) or suspects
        if not suspects:
            # Nobody of ours was running: the user changed it. Take it as the new baseline
            # (but what an agent's put-back is owed: it is tried again).
            self._adopt_surface(now)
            self._hooks = surface.hooks_path(self.repo.root)
            self._surface_checked = began
            return swapped
        patch = surface.patch(common, self._surface, now, labels)
        found = Violation(number=0, where=REPOSITORY, git_files=tuple(labels), suspects=suspects)
        restored = False
        if self.restore:
            found = self._intend(found, patch)
            back = labels
            if set(labels) & set(surface.ALTERNATES):
                # Objects may have been moved out into the store it names: all that the refs
                # reach is copied into a pack of the repository's own before it is put back.
                back = [label for label in labels if label not in surface.ALTERNATES]
                with self._job("objects"):
                    git.git(self.repo.root, "repack", "-a", "-q")
                    back = labels
            with contextlib.suppress(OSError):  # not restored is recorded as such
                surface.put_back(common, self._surface, back, now)
            restored = not surface.changed(self._surface, self._read_surface())
        if restored:
            self._surface_checked = time.time()
        else:  # an agent writing it again meanwhile, say: tried again by every scan (but
            # `alternates`, put back only once a repack took in the objects it may hold)
            left = set(back) - set(surface.ALTERNATES)
            self._unrestored |= left & set(surface.changed(self._surface, self._read_surface()))
        violation = self._record(dataclasses.replace(found, restored=restored), patch_text=patch)
        return [*swapped, violation]

    def _scan_setuid(self, began: float) -> list[Violation]:
        """A setuid or setgid file new in the git dir: its bits taken off (the file kept).

        A copy of a shell made setuid there (an agent running as root, or a setgid one of your
        group) would give anyone who finds it your rights. A walk of the whole git dir, its
        cost growing with its refs, reflogs and loose objects: every :data:`_SETUID_EVERY`
        and in the last scan, not after each attempt (nothing of it runs with swarm's git).
        """
        common = self.repo.common_dir
        now = surface.setuid_files(common)
        labels = sorted(k for k, bits in now.items() if bits & ~self._setuid.get(k, 0))
        window = (self._setuid_checked, began)
        suspects = self._agents.suspects(window, exclude=()) if labels else ()
        suspects = self._agents.narrow(suspects, common, labels) or suspects
        if not suspects:  # none, or the user's own: the new baseline
            self._setuid, self._setuid_checked = now, began
            return []
        patch = f"# setuid or setgid files made in {common}\n" + "".join(
            f"# {label}: mode {now[label]:o}: its setuid and setgid bits taken off\n"
            for label in labels
        )
        found = Violation(number=0, where=REPOSITORY, git_files=tuple(labels), suspects=suspects)
        restored = False
        if self.restore:
            found = self._intend(found, patch)
            with contextlib.suppress(OSError):  # not restored is recorded as such
                surface.disarm(common, labels)
            left = surface.setuid_files(common)
            restored = not any(left.get(k, 0) & ~self._setuid.get(k, 0) for k in labels)
        self._setuid_checked = began
        return [self._record(dataclasses.replace(found, restored=restored), patch_text=patch)]

    def _put_back_again(self) -> None:
        """Put back the git files an earlier put-back could not (their agent wrote them again).

        The baseline stays as it was until they are: taken as found, a planted `core.fsmonitor`
        would run with your next `git status` once the run ended.
        """
        if not self._unrestored or not self.restore:
            return
        with contextlib.suppress(OSError):
            now = self._read_surface()
            surface.put_back(self.repo.common_dir, self._surface, sorted(self._unrestored), now)
        self._unrestored &= set(surface.changed(self._surface, self._read_surface()))

    def _adopt_surface(self, now: surface.Surface) -> None:
        """Take *now* as the git files' baseline, but for those a put-back is still owed."""
        owed = {label: self._surface.get(label) for label in self._unrestored}
        self._surface = dict(now)
        for label, entry in owed.items():
            if entry is None:
                self._surface.pop(label, None)
            else:
                self._surface[label] = entry

    def _scan_graph(self, began: float) -> list[Violation]:
        """A commit graph that changed and does not match the commits it describes: removed."""
        common = self.repo.common_dir
        now = graph.fingerprint(common)
        window = (self._graph_checked, began)
        self._graph_checked = began
        if now == self._graph:
            return []
        wrong = graph.mismatch(self.repo.root)
        if not wrong:  # git's own (`git gc`, `git commit-graph write`): it matches the commits
            self._graph = now
            return []
        self._changes.mark_all()  # git showed your checkouts' HEAD through it
        if self.restore:
            with contextlib.suppress(OSError):  # not removed is recorded as such
                graph.remove(common)
        self._graph = graph.fingerprint(common)
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=(graph.LABEL,),
            suspects=suspects,
            restored=not self._graph,
        )
        return [self._record(violation, patch_text=f"git commit-graph verify:\n{wrong}\n")]

    def _scan_place(
        self,
        place: _Place,
        began: float,
        *,
        quick: bool,
        thorough: bool = False,
        since: float | None = None,
    ) -> list[Violation]:
        """Check *place*; *quick* trusts an unchanged `git status` (blind to re-edited files).

        *thorough* (a change was seen there): an unchanged status is trusted only if the
        baseline was clean, where it is exact. Suspects are the agents alive from *since*
        (by default, when it was last seen as its baseline).
        """
        window = (place.checked if since is None else since, began)
        made = self._made_repositories(place, window)
        if (
            quick
            and not (thorough and place.base is not None)
            and status(place.path) == place.status
        ):
            place.checked = began
            return []
        _seed(place.scratch, place.saved_index)
        now = capture(place.path, place.scratch, self._excludes(place))
        base = self._base(place)
        if now == base:
            place.checked = began
            return made
        paths = changed_paths(place.path, base.tree, now.tree)
        if place.users and any((place.path / p / ".git").is_file() for p in paths):
            # A linked worktree there (a task's, moved in since this scan looked for them):
            # moved back, or left out, before anything here is taken for new files to remove.
            with self._repo_lock:
                made += self._scan_worktrees(began, set())
                midway = bool(self._trees.doubted)
            if midway:  # a worktree being moved, maybe here: compared once it is judged
                self._changes.mark(place.where)
                return made
            now = capture(place.path, place.scratch, self._excludes(place))
            if now == base:
                place.checked = began
                return made
            paths = changed_paths(place.path, base.tree, now.tree)
        if place.where.startswith(WORKTREE_PREFIX) and self._removing(place.path):
            self._changes.mark(place.where)  # your `git worktree remove` at work: looked at again
            return made
        head = _head_move(base, now)
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        suspects = self._agents.narrow(suspects, place.path, paths) or suspects
        if not suspects:
            # Nobody of ours was running: the user worked here. Take it as the new baseline.
            self._watch(place.where, place.path)
            return made
        patch = files_patch(place.path, base.tree, now.tree, paths)
        found = Violation(
            number=0,
            where=place.where,
            paths=tuple(paths),
            head=head,
            index_changed=now.index != base.index,
            suspects=suspects,
        )
        restored = False
        if self.restore:
            found = self._intend(found, patch)
            restored = restore_checkout(
                place.path,
                base=base,
                now=now,
                saved_index=place.saved_index,
                scratch=place.scratch,
                exclude=self._excludes(place),
            )
        if restored:
            place.checked = time.time()
        else:
            self._watch(place.where, place.path)
        violation = self._record(dataclasses.replace(found, restored=restored), patch_text=patch)
        return [*made, violation]

    def _made_repositories(self, place: _Place, window: tuple[float, float]) -> list[Violation]:
        """A `.git` made in a directory of a user's checkout: removed, unless the user made it."""
        made = [d for d in _repositories_in(place.path, place.dirs) if d not in place.repos]
        if not made:
            return []
        exclude = () if place.users else (place.where,)
        suspects = self._agents.suspects(window, exclude=exclude)
        if not suspects:
            place.repos |= set(made)
            return []
        if self.restore:
            for rel in made:
                remove(place.path / rel / ".git")
        paths = tuple(f"{rel}/.git" for rel in made)
        restored = self.restore and not _repositories_in(place.path, made)
        patch = "".join(f"# {p}: a repository made in your checkout, removed\n" for p in paths)
        violation = Violation(
            number=0, where=place.where, paths=paths, suspects=suspects, restored=restored
        )
        return [self._record(violation, patch_text=patch)]

    def _base(self, place: _Place) -> Snapshot:
        """*place*'s baseline; one that was clean is rebuilt from its commit and saved index."""
        if place.base is None:
            oid = status_field(place.status, "oid")
            head = None if oid in {"", "(initial)"} else oid
            branch = status_field(place.status, "head")
            saved = {"GIT_INDEX_FILE": str(place.saved_index)}
            place.base = Snapshot(
                head_ref=None if branch in {"", "(detached)"} else f"refs/heads/{branch}",
                head=head,
                index=staged_digest(place.path, saved),
                tree=git.git(place.path, "rev-parse", f"{oid}^{{tree}}").strip(),
            )
        return place.base

    def _excludes(self, place: _Place) -> tuple[str, ...]:
        return self._exclude if place.where == MAIN else ()


def _users_label(checkout: Path) -> str:
    """The name of your linked worktree *checkout* in the guard's notes: one printable line."""
    return WORKTREE_PREFIX + path_text(str(checkout))


def _head_move(base: Snapshot, now: Snapshot) -> str:
    """How HEAD moved from *base* to *now* ("": it did not)."""
    if (now.head_ref, now.head) == (base.head_ref, base.head):
        return ""
    return f"HEAD moved from {describe_head(base)} to {describe_head(now)}"


def _being_removed(checkout: Path) -> bool:
    """Whether a `git worktree remove` is removing the linked worktree *checkout* now.

    git deletes its files one by one (its `.git` among them, in no set order), its admin dir
    last: a big worktree (an ignored `node_modules`) takes seconds, and what went meanwhile
    is git's doing.
    """
    target = os.path.realpath(checkout)
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        args = process.info.get("cmdline") or []
        if process.info.get("name") != "git" or "worktree" not in args:
            continue
        at = args.index("worktree")
        if args[at + 1 : at + 2] != ["remove"]:
            continue
        cwd = Path(process.info.get("cwd") or "/")
        bases = [cwd, *(cwd / d for o, d in itertools.pairwise(args[1:at]) if o == "-C")]
        names = [a for a in args[at + 2 :] if not a.startswith("-")]
        if any(os.path.realpath(b / n) == target for b in bases for n in names):
            return True
    return False


def _unreadable_index(root: Path) -> bool:
    """Whether git cannot read the index of the checkout *root* (a file that is not one)."""
    try:
        if not index_path(root).exists():
            return False
    except SwarmError:  # no `.git` there to name its index (a worktree being removed)
        return False
    # A pathspec that matches nothing: git reads (and checks) the whole index, prints nothing.
    probe = runner.run(root, "ls-files", "--", ":(literal,top).git/x", check=False)
    return probe.returncode != 0


def _repositories_in(root: Path, dirs: Sequence[str]) -> list[str]:
    """Those of *dirs* (under *root*) that hold a ``.git`` of their own."""
    return [d for d in dirs if os.path.lexists(root / d / ".git")]


def _drop_copies(place: _Place) -> None:
    """Delete the index copies of a place no longer compared (its worktree gone)."""
    for copy in (place.saved_index, place.scratch):
        with contextlib.suppress(OSError):
            copy.unlink()


def _seed(scratch: Path, saved: Path) -> None:
    """Start the scratch index as a copy of the saved one, if it has none yet.

    It seeds git's stat cache, so that a capture hashes only the files changed since. A clean
    task worktree's baseline needs no capture: its scratch index is made only once one does,
    with the saved one's modification time. git trusts an entry's stat data only for a file
    older than the index: a copy dated later would hide a file rewritten at the same size
    within the second of its checkout.
    """
    if not scratch.exists() and saved.is_file():
        shutil.copy2(saved, scratch)


def _present(path: Path) -> bool:
    """Whether *path* exists, or cannot be looked at: a directory made unreadable is not gone."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # EACCES: an agent's `chmod 0` of its own worktree
        return True
    return True

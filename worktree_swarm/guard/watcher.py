"""The guard itself: baselines, the scan loop, and what it does about each change.

What is watched, against a baseline recorded when watching starts:

- the user's checkout and the user's other linked worktrees: HEAD (branch or commit), the
  staged entries of the index, and the content of every file git would see (tracked and
  untracked, not ignored), captured as a tree object through a private scratch index, so
  the user's own uncommitted edits are part of the baseline and can be put back byte for byte;
- the repository's executable surface: ``config``, ``config.worktree`` files, ``hooks/``, the
  ``core.hooksPath`` directory and ``info/`` (see surface.py);
- program-running settings new in your global or system git config (user_config_checks.py);
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

:class:`Guard` is one mixin per kind of check, each in a module of its own: state.py (its
fields), verdicts.py (violations and failed scans on record), ref_checks.py,
object_checks.py, pack_checks.py, baselines.py, worktree_checks.py, surface_checks.py,
checkout_checks.py, user_config_checks.py and attempt_checks.py (the checks after an
attempt); recovery.py finishes what a killed manager's guard left half done. This module
keeps the guard's life: its start, the hand-over of task worktrees and the scan loop.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.git import repo as git
from worktree_swarm.git import tampering
from worktree_swarm.guard import (
    graph,
    held_files,
    integrity,
    packfiles,
    remotes,
    setuid,
    store_dir,
)
from worktree_swarm.guard.attempt_checks import REMOTES, AttemptChecks
from worktree_swarm.guard.checkout_checks import CheckoutChecks
from worktree_swarm.guard.model import MAIN, REPOSITORY, Violation
from worktree_swarm.guard.object_checks import ObjectChecks
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.recovery import finish_put_backs
from worktree_swarm.guard.snapshot import read_refs, status_field
from worktree_swarm.guard.state import MIN_INTERVAL
from worktree_swarm.guard.surface_checks import SETUID_EVERY, SurfaceChecks
from worktree_swarm.guard.user_config_checks import UserConfigChecks
from worktree_swarm.guard.worktree_checks import users_label
from worktree_swarm.infra import interrupts

# How often a guard that only listens (a merge's) reads swarm's ref announcements.
_HEAR_INTERVAL = 0.05
UNWATCHED_EVENT = "checkout_changed_unwatched"


class Guard(AttemptChecks, CheckoutChecks, SurfaceChecks, ObjectChecks, UserConfigChecks):
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
        """Record the baselines of the user's checkouts, the git dir and every watched ref.

        In a run, a stop signal is taken between its steps (:func:`.interrupts.check`) and
        ends a baseline's `git add` part-way: one cut short leaves its files as a killed
        manager's guard does, for the next manager.
        """
        with self._lock:
            self._dir.mkdir(parents=True, exist_ok=True)
            for line in finish_put_backs(self.repo, self._dir):  # before the baselines
                self._log(line)
            interrupts.check()
            last = self._last_base()  # of this run's previous manager: one is resumed
            self._watch(MAIN, self.repo.root, stop=interrupts.noted())
            with self._job(MAIN):  # failing: told, the run goes on
                self._unwatched = self._changed_since(last)
            for path in self._users_worktrees():
                interrupts.check()
                with self._job(users_label(path)):  # failing: told, the run goes on
                    self._watch(users_label(path), path, stop=interrupts.noted())
                    self._linked[path] = git.git_dir(path)
            interrupts.check()
            self._take_surface()
            self._setuid = setuid.setuid_files(self.repo.common_dir)
            self._graph = graph.fingerprint(self.repo.common_dir)
            self._store = store_dir.store_id(self.repo.common_dir)
            interrupts.check()
            self._objects = ObjectWatch(self.repo.common_dir / "objects")
            with self._job("objects"):  # failing, deleted objects of yours cannot come back
                self._hold_afresh()  # a resumed run's old hold let go
                self._held_seen = (-1, time.time_ns())  # linking them changed their time
                try:
                    self._packs = packfiles.packs(self.repo.common_dir)
                except OSError as error:  # unlistable: each pack found later is checked as new
                    self._packs = frozenset()
                    self._part_failed("objects", f"objects/pack not listed: {error.strerror}")
                self._midx = packfiles.midx_print(self.repo.common_dir)
                # Runs whose manager died (this one holds the manager lock) need theirs no
                # more: a resume holds afresh, and they would pin what a `git gc` freed.
                # (Compared as files: a symlink to this run's directory names its own too.)
                self._held.mkdir(parents=True, exist_ok=True)
                own = self._held.stat()
                for stale in self._dir.parent.parent.glob(f"*/{self._dir.name}/{held_files.HELD}"):
                    with contextlib.suppress(FileNotFoundError):
                        if not os.path.samestat(stale.stat(), own):
                            held_files.let_go(stale)
            interrupts.check()
            self._refs = read_refs(self.repo.root)
            with self._job(REMOTES):
                self._remotes.base = remotes.read(self.repo.root, self.repo.common_dir, data=True)
            self._channel.started(dict(self._refs))
            self._good = dict(self._refs)
            now = time.time()
            self._refs_checked = self._surface_checked = self._graph_checked = now
            self._objects_checked = self._stash_checked = self._worktrees_checked = now

    def stand_down(self) -> None:
        """After a :meth:`start` cut short: its change tests let go, its files kept as they are."""
        self._close_watches()

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

    def _close_watches(self) -> None:
        self._changes.close()
        self._file_stats.close()
        if self._objects is not None:
            self._objects.close()
        if self._dir_modes is not None:
            self._dir_modes.close()

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
                found += self._scan_surface(began, afresh=final)
                found += self._scan_graph(began)
                found += self._scan_user_config(began)
                if final or time.monotonic() >= self._setuid_due:
                    found += self._scan_setuid(began)
                    self._setuid_due = time.monotonic() + SETUID_EVERY
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
            found += self._store_lost(began) or []
            with self._repo_lock, self._job("worktrees"):
                self._follow_linked()
                # Before your checkout: a worktree moved into it goes back, not away.
                found += self._scan_worktrees(began, pending)
            changed = self._changes.changed(full=self._closing.is_set())
            self._seen_untouched(changed, began)
            sweep = None if final else self._sweep_pick()
            compared = time.monotonic()
            for place in [p for p in self._places.values() if p.users]:
                # Compared in full at the end, unflagged: a change found then is one the test
                # missed (a write through a hard link), its suspects those since git last looked.
                flagged = place.where in changed
                if final or flagged or place is sweep:
                    found += self._compare(place, began, quick=False, sweep=not flagged)
            users = time.monotonic() - compared
            places = [p for p in self._places.values() if not p.users]
        found += self._scan_tasks(places, changed, sweep, final=final)
        if final and self._closing.is_set():
            self._close_watches()  # the last scan: their events are of no use any more
            with self._job("objects"):
                integrity.recover_held(self.repo.root, self.repo.common_dir, self._held)
            held_files.let_go(self._held)
        # Only comparing the user's checkouts in full can take long (a huge checkout that keeps
        # changing, or without inotify): the pause keeps that under a tenth of the time. The
        # rest of a scan is cheap, and flagged task worktrees have their budget.
        self._interval = max(MIN_INTERVAL, 10 * users)
        return found

    # -- internals ---------------------------------------------------------------------------

    def _seen_untouched(self, changed: set[str], began: float) -> None:
        """The places the change test saw untouched until it was read (after *began*)."""
        for place in self._places.values():
            if place.where not in changed and self._changes.watched(place.where):
                place.seen = began

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
        if path.is_dir() and tampering.tampered(self.repo, path) is None:
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

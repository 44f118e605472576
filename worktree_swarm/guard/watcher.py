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
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.core.models import ProcessIdentity
from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner, worktrees
from worktree_swarm.guard import graph, integrity, remotes, surface
from worktree_swarm.guard.attribution import Agents
from worktree_swarm.guard.changes import Changes
from worktree_swarm.guard.channel import Channel, worktree_key
from worktree_swarm.guard.lock import TurnLock
from worktree_swarm.guard.model import (
    MAIN,
    REPOSITORY,
    WORKTREE_PREFIX,
    RefMove,
    ScanFailure,
    Snapshot,
    Violation,
    short_ref,
    steady_reason,
)
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.restore import (
    keep_undone,
    open_up,
    put_index,
    remove,
    restore_checkout,
    restore_ref,
    undone_commits,
)
from worktree_swarm.guard.snapshot import (
    SYMBOLIC,
    capture,
    changed_paths,
    describe_head,
    drop_baselines,
    files_patch,
    index_path,
    is_clean,
    read_refs,
    ref_owner,
    ref_patch,
    staged_digest,
    status,
    status_field,
    symbolic_head,
)
from worktree_swarm.infra import fs
from worktree_swarm.infra.redact import redact

_MIN_INTERVAL = 1.0
_DENIED = "Permission denied"  # a comparison that failed on a file you cannot read
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
STASH = "refs/stash"
REMOTES = "remote refs"  # the job that checks the remote-tracking refs
_MOVING = "moving-back"  # a task worktree's admin dir -> [where it was found, its place]
_REMOTES_NOTE = "remotes-putting-back.json"  # remote-tracking refs being put back (remotes.py)
# A verdict from before its put-back until the run applied it (see Guard.settled): one of a
# manager killed meanwhile is recorded and applied by the next command (cut_verdicts).
_VERDICTS = "verdicts"
_REASON_CHARS = 300


_MAIN_TREE = "main.tree"  # the tree of your checkout's baseline, for a manager that resumes

UNWATCHED_EVENT = "checkout_changed_unwatched"


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


def _tip(repo: git.Repo, ref: str) -> str | None:
    """Where *ref* points: its loose file read (a new branch's), else git asked."""
    try:
        text = (repo.common_dir / ref).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    if git.is_object_name(text):
        return text
    said = runner.run(
        repo.root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False
    )
    return said.stdout.strip() or None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unwatched:
    """Files of your checkout that changed while no manager of the run watched it."""

    paths: tuple[str, ...]
    patch: str  # from the last baseline to now: `git apply -R` undoes them

    def as_dict(self) -> dict[str, object]:
        """As the run's event records it."""
        return {"paths": list(self.paths), "patch": self.patch}


@dataclass(slots=True, kw_only=True)
class _Place:
    """A watched checkout and its baseline."""

    where: str
    path: Path
    scratch: Path  # the private index that captures its files
    saved_index: Path  # the real index as it was at the baseline
    base: Snapshot | None  # None: clean at the baseline, computed when first needed
    checked: float  # when it was last seen as its baseline
    status: str  # quick fingerprint: `git status` with branch and commit, as of the baseline
    compared: float = 0.0  # when git last compared it (monotonic clock), for the sweep
    seen: float = 0.0  # when the change test last found it untouched (attribution's window)
    # A user's checkout: its directories git sees into, and those holding a `.git` already.
    # A `.git` made in one of them hides nothing from git's view of the checkout, yet your
    # next git command there reads that repository's config (its fsmonitor runs).
    dirs: tuple[str, ...] = ()
    repos: frozenset[str] = frozenset()

    @property
    def users(self) -> bool:
        """Whether this is a checkout of the user's (compared in full on every scan)."""
        return self.where == MAIN or self.where.startswith(WORKTREE_PREFIX)


@dataclass(slots=True)
class _Worktrees:
    """The run's task worktrees, expected where swarm made them."""

    paths: dict[str, Path] = field(default_factory=dict)  # task -> its worktree (busy() says)
    real: dict[str, str] = field(default_factory=dict)  # task -> its worktree's real path then
    admins: dict[str, str] = field(default_factory=dict)  # task -> its admin dir, while whole
    lost: dict[str, Violation] = field(default_factory=dict)  # busy task -> how it went
    # Tasks whose worktree's files were found gone while git's registration still named them:
    # a `git worktree move` between its rename and its note of the new place, or an `rm -rf`.
    doubted: set[str] = field(default_factory=set)


@dataclass(slots=True, kw_only=True)
class _Remotes:
    """The remote-tracking refs' baseline, and what was put back of them."""

    base: remotes.Remotes | None = None  # None: not read yet (the read failed)
    seen: float  # when they were last found as their baseline
    notes: list[remotes.Note] = field(default_factory=list)  # put back, not yet drained
    read: dict[str, str] | None = None  # as this scan's read of the watched refs found them
    read_at: float = 0.0  # when that read began


class Guard:
    """Watches the user's checkouts, the git dir, the refs and idle task worktrees of one run.

    Thread-safe: workers call :meth:`busy`, :meth:`agent_started`, :meth:`agent_ended`,
    :meth:`own_head` and :meth:`after_attempt`; a thread of its own scans periodically; the
    run loop calls :meth:`drain` and :meth:`drain_failures`.
    """

    # The object store's generation when the held files were last compared with it, and the
    # time from which a held file changed since is checked against its name.
    _held_seen = (-1, 0)
    _packs: frozenset[str] = frozenset()  # the pack indexes of the store known not to lie
    _midx: integrity.MidxPrint = ()  # the multi-pack-index as last found not to lie
    _loose_seen: set[str] | None = None  # the loose objects known to hold what they are named
    _loose_held: frozenset[str] = frozenset()  # the loose objects held (compared apart)
    _loose_unread: frozenset[str] = frozenset()  # could not be read last time: read next time
    _worktrees_checked = 0.0  # when task worktrees were last all found where swarm made them
    _packs_verified: frozenset[str] | set[str] = frozenset()  # packs new to this scan
    _rev_check: frozenset[str] = frozenset()  # packs whose .rev to check (index names)
    _noted: dict[int, Path]  # violation number -> its note, until the run settles it
    _unwatched: Unwatched | None  # what start() found changed while no manager watched
    _resumable: bool  # its baseline of your checkout is kept for a resuming manager
    # The background scans: asked to look at once, and when the last one began (monotonic).
    _asked: threading.Event
    _looked: threading.Condition
    _last_look = 0.0
    _setuid: dict[str, int]  # the setuid and setgid files of the git dir: their bits
    _failing: dict[str, str]  # job -> reason of its current streak of failures
    _denied: set[str]  # the jobs whose last failure was a permission denied
    _setuid_due = 0.0  # monotonic time of the next walk for them
    _store: integrity.StoreId | None = None  # the object store's directory, when watched

    def __init__(
        self,
        repo: git.Repo,
        *,
        work_dir: Path,
        restore: bool,
        exclude: Sequence[Path] = (),
        on_record: Callable[[Violation], None] | None = None,
        others: Callable[[str], bool] | None = None,
        answers: bool = True,
    ) -> None:
        self.repo = repo
        self.restore = restore
        # Whether a task's branch is another swarm command's to move now (a run's, beside a
        # merge): that command's guard judges its moves. *answers*: see Channel.
        self._others = others
        # Told of each violation as it is found, in the finding thread: the run records it
        # at once, so a manager killed before its loop drains it has it on record. With it,
        # each verdict is noted (under _VERDICTS, see _noted) until the run says it applied it.
        self._on_record = on_record
        # Directories inside the checkout that are not the user's (a worktree root there).
        root = Path(os.path.realpath(repo.root))
        self._roots = tuple(Path(os.path.realpath(p)) for p in exclude)
        self._exclude = tuple(
            f":(exclude,top){p.relative_to(root).as_posix()}"
            for p in self._roots
            if p.is_relative_to(root) and p != root
        )
        self._dir = work_dir
        self._held = work_dir / integrity.HELD
        self._lock = TurnLock()
        self._places: dict[str, _Place] = {}
        self._busy: dict[str, int] = {}
        self._refs: dict[str, str] = {}
        self._agents = Agents()
        self._channel = Channel(repo.state_dir, self._agents, answers=answers)
        self._evidence: dict[str, str] = {}  # ref -> task whose worktree HEAD was on it
        self._new: list[Violation] = []
        self._failures: list[ScanFailure] = []
        self._failing, self._denied = {}, set()
        self._began: dict[tuple[str, str], int] = {}  # (job, reason) -> streaks so far
        self._new_lock = threading.Lock()  # drain() must not wait for a scan
        # The repository-wide state (git's files, the refs, the objects) has a lock of its own:
        # the checks after an attempt take only this one, so workers handing worktrees over
        # (the places, under the guard's lock) do not wait for them. Order: guard's, then this.
        self._repo_lock = threading.RLock()
        # Numbered on from the patches a killed manager's guard saved here (a resumed run's).
        self._count = _last_patch_number(work_dir)
        now = time.time()
        self._refs_checked = self._surface_checked = self._setuid_checked = now
        self._objects_checked = self._stash_checked = self._graph_checked = now
        self._settled_from = 0.0  # monotonic time the last check of git's files etc. began
        self._surface: surface.Surface = {}
        self._hooks: Path | None = None
        self._graph: graph.Fingerprint = ()  # the commit graph as last found matching
        self._good: dict[str, str] = {}  # ref -> its last tip seen complete
        self._walked: dict[str, str] = {}  # ref -> its last tip whose every object was seen
        self._objects: ObjectWatch | None = None  # which checks must look at every ref
        self._complete_at = {False: -1, True: -1}  # deep or not -> generation of the last
        self._packed: dict[str, str] = {}  # task branch -> its tip last copied into the pack
        self._keep_lock = threading.Lock()  # the kept pack and ``_packed``
        self._queued: dict[str, str] = {}  # task branch -> tip waiting for the pack's lock
        self._queue_lock = threading.Lock()  # ``_queued``
        self._reported: set[tuple[str, str]] = set()  # (ref, tip) reported broken
        self._provisioning: set[str] = set()  # the `.git` of each worktree swarm is making
        # Busy tasks whose branch only swarm moves now; task branches whose tip could not be
        # read when their task ended (no file descriptor left, git failing): the next refs
        # scan takes those as it finds them, judging nothing.
        # _unrestored: git files a put-back could not make as they were (tried again).
        self._pinned, self._unread, self._unrestored = set[str](), set[str](), set[str]()
        self._interval = _MIN_INTERVAL
        self._read: dict[str, str] = {}  # every watched ref, as the last refs scan read them
        self._changes = Changes()  # which places may have changed: inotify and stat signatures
        self._sweep_at = 0.0  # monotonic time of the next sweep step
        self._linked: dict[Path, Path] = {}  # the user's linked worktrees -> their git dirs
        self._trees, self._remotes, self._noted = _Worktrees(), _Remotes(seen=now), {}
        self._unwatched, self._resumable = None, False  # see keep_base_for_resume
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

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

    def report(self, violation: Violation) -> Violation:
        """Record an outside write found elsewhere (a Ray node's); handed over by :meth:`drain`."""
        return self._record(violation, patch_text=None)

    def drain(self) -> list[Violation]:
        """Violations found since the last call (for the run loop to record and apply)."""
        with self._new_lock:
            new, self._new = self._new, []
            return new

    def drain_notes(self) -> list[remotes.Note]:
        """Remote-tracking refs put back since the last call (no one's fault: a fetch)."""
        with self._new_lock:
            new, self._remotes.notes = self._remotes.notes, []
            return new

    def drain_failures(self) -> list[ScanFailure]:
        """Scans that failed since the last call (each streak of one reason once)."""
        with self._new_lock:
            new, self._failures = self._failures, []
            return new

    # -- failures ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _job(self, job: str) -> Iterator[None]:
        """Run one part of a scan; a failure is recorded with its reason, the rest goes on."""
        try:
            yield
        except (SwarmError, OSError) as exc:
            denied = isinstance(exc, PermissionError) or _DENIED in str(exc)  # before it is cut
            (self._denied.add if denied else self._denied.discard)(job)
            self._failed(job, str(exc))
        else:
            self._denied.discard(job)
            if self._failing.pop(job, None) is not None:
                self._log(f"{job}: scanned again")

    def _failed(self, job: str, reason: str) -> None:
        reason = steady_reason(reason)[:_REASON_CHARS]
        with self._new_lock:
            if self._failing.get(job) == reason:
                return  # the same failure again: told once per streak
            self._failing[job] = reason
            count = self._began[job, reason] = self._began.get((job, reason), 0) + 1
            again = f" again ({count} times)" if count > 1 else ""
            self._log(f"{job}: failed{again}: {reason}")
            self._failures.append(ScanFailure(job=job, reason=reason, count=count))

    def _log(self, line: str) -> None:
        with contextlib.suppress(OSError):
            self._dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with fs.open_append(self._dir / "guard.log") as out:
                out.write(f"{stamp} {redact(line)}\n")  # a file's name can be a key

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

    def _hear(self) -> set[str]:
        """Read swarm's announcements now: the refs (and worktrees) being moved."""
        pending: set[str] = set()
        with self._job("ref announcements"):
            pending, refused = self._channel.read()
            for why in refused:
                self._failed("ref announcements", why)
        return pending

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
        admin = None if path is None else worktrees.own_admin(self.repo, path)
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
        noted = self._dir / _REMOTES_NOTE  # a manager killed half-way: the next one finishes
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
        suspects = tuple(sorted(evidence)) or self._agents.suspects(window, exclude=exclude)
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

    def _scan_objects(
        self, began: float, *, deep: bool, refs: dict[str, str] | None = None, pack: bool = True
    ) -> list[Violation]:
        """Refs whose objects were deleted: restored from the kept pack, or kept by name.

        *refs*: every watched ref, as just read (by default, read now). Only refs that moved
        since they were last seen complete are checked while the object store's change test
        (objects.py) saw nothing that could lose an object; every ref otherwise. *pack*: copy
        the task branches that moved into the kept pack.
        """
        window = (self._objects_checked, began)
        root, common = self.repo.root, self.repo.common_dir
        refs = read_refs(root) if refs is None else refs
        refs = {r: tip for r, tip in refs.items() if not tip.startswith(SYMBOLIC)}  # no object
        generation = -2 if self._objects is None else self._objects.generation()
        seen = self._walked if deep else self._good
        only = None
        if generation == self._complete_at[deep]:
            only = {ref for ref, tip in refs.items() if seen.get(ref) != tip}
        found = self._planted_links(window)
        found += self._new_packs(window)
        found += self._packs_rewritten(window)
        found += self._lying_revs(window)
        found += self._scan_midx(window)
        if deep or self._closing.is_set():
            found += self._forged_loose(window)
        # The last scan compares them whatever the events said (a change through another name).
        if generation != self._held_seen[0] or self._objects is None or self._closing.is_set():
            found += self._written_over(window, generation)
        broken = integrity.broken_refs(root, refs, deep=deep, only=only)
        pack_dir = self._dir / "keep"
        again: set[str] = set()
        if broken:
            with contextlib.suppress(OSError):  # what is still broken is reported as such
                integrity.recover(common, pack_dir, self._held)
            again = set(integrity.broken_refs(root, {r: refs[r] for r in broken}, deep=deep))
        found += self._broken(broken, again, refs, window)
        good_now = {r: s for r, s in refs.items() if r not in again}
        self._good.update(good_now)
        if deep:
            self._walked.update(good_now)
        if not again:  # every ref complete as of this generation
            self._objects_checked = began
            self._complete_at[deep] = generation
            if deep:
                self._complete_at[False] = generation
        if pack:
            self._keep_task_work(good_now, pack_dir)
        return found

    def _new_packs(self, window: tuple[float, float]) -> list[Violation]:
        """Packs that appeared since and whose index lies about their objects: removed."""
        common = self.repo.common_dir
        now = integrity.packs(common)
        new = sorted(now - self._packs)
        self._packs_verified = set(new)  # as they are now: not checked again by this scan
        lies = {}
        unsure = set()  # its check was killed: checked again at the next scan
        for name in new:
            if self._objects is not None:  # first: a write after the check below is seen
                self._objects.watch_pack(common / "objects" / "pack" / name)
            why = integrity.lying_pack(self.repo.root, common / "objects" / "pack" / name)
            if why is None:
                unsure.add(name)
            elif why:
                lies[name] = why
        self._rev_check |= set(new) - set(lies)
        # No agent of ours was running: damage of another kind (or a check that failed for
        # want of memory), not an attack, and the pack may well be yours: left alone.
        suspects = self._agents.suspects(window, exclude=()) if lies else ()
        self._drop_packs(lies if suspects else ())
        # Those checked (and those known before) still there: not one that came meanwhile.
        self._packs = ((self._packs | now) - unsure) & integrity.packs(common)
        listed = "".join(f"objects/pack/{name}: {why}\n" for name, why in lies.items())
        return self._lying_packs(lies, suspects, f"git verify-pack:\n{listed}")

    def _drop_packs(self, names: Iterable[str]) -> None:
        """Move the packs *names* (by index) aside, unless outside writes are allowed."""
        if not self.restore:
            return
        for name in names:
            with contextlib.suppress(OSError):  # not removed is recorded as such
                integrity.drop_pack(
                    self.repo.common_dir / "objects" / "pack" / name, self._dir / integrity.DROPPED
                )

    def _lying_packs(
        self, lies: Mapping[str, str], suspects: tuple[str, ...], patch_text: str
    ) -> list[Violation]:
        """The outside write of packs (by index) that lie, if an agent of ours is suspected."""
        if not suspects:
            return []  # none, or no agent of ours was running: damage of another kind
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(f"objects/pack/{name}" for name in lies),
            suspects=suspects,
            restored=not set(lies) & self._packs,
        )
        return [self._record(violation, patch_text=patch_text)]

    def _packs_rewritten(self, window: tuple[float, float]) -> list[Violation]:
        """Packs written to in place that now lie about their objects.

        One of yours is the guard's hold on it too: reported, left as found. One made during
        the run is removed, as a new pack that lies is.
        """
        if self._objects is None:
            return []
        common = self.repo.common_dir
        lies = self._rewritten_lies(self._objects, self._objects.written_packs())
        if not lies:
            return []
        self._changes.mark_all()  # git showed your checkouts' files through it
        suspects = self._agents.suspects(window, exclude=())  # none: left alone, as a new pack
        made = [name for name in lies if not (self._held / "pack" / name).exists()]
        self._drop_packs(made if suspects else ())  # yours: the hold is that same file
        self._packs = integrity.packs(common)
        listed = "".join(
            f"objects/pack/{name}: rewritten in place, git verify-pack: {why}"
            " (a pack of yours is the guard's hold on it too: no copy to put back)\n"
            for name, why in lies.items()
        )
        return self._lying_packs(lies, suspects, listed)

    def _rewritten_lies(self, objects: ObjectWatch, written: set[str]) -> dict[str, str]:
        """What is wrong with each pack of which a file in *written* was written (by index)."""
        lies = {}
        for stem in sorted({file.rpartition(".")[0] for file in written}):
            name = f"{stem}.idx"
            idx = self.repo.common_dir / "objects" / "pack" / name
            if name in self._packs_verified or not idx.exists():
                continue  # new to this scan (verified), or gone
            if integrity.replaced_held(idx, self._held / "pack" / name):
                continue  # another file under the name of yours: put back as written over
            objects.watch_pack(idx)  # the files now there: first, as for a new pack
            why: str | None = ""
            if {f"{stem}.pack", name} & written:
                why = integrity.lying_pack(self.repo.root, idx)
            if why is None:  # its check was killed: it tells nothing, checked at the next scan
                objects.written_again({f"{stem}.pack", name} & written)
            elif why:
                lies[name] = why
            else:
                self._rev_check |= {name}
        return lies

    def _lying_revs(self, window: tuple[float, float]) -> list[Violation]:
        """Reverse indexes (``.rev``) of packs made or written to that lie: removed.

        git does without one (it orders a pack's objects itself): removed is put back.
        """
        common = self.repo.common_dir
        names, self._rev_check = sorted(self._rev_check), frozenset()
        lies = {}
        for name in names:
            why = integrity.lying_rev(common / "objects" / "pack" / name)
            if why:
                lies[name.removesuffix(".idx") + ".rev"] = why
        if not lies:
            return []
        if self.restore:
            for rev in lies:
                with contextlib.suppress(FileNotFoundError):
                    (common / "objects" / "pack" / rev).unlink()
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(f"objects/pack/{rev}" for rev in lies),
            suspects=suspects,
            restored=not any((common / "objects" / "pack" / rev).exists() for rev in lies),
        )
        listed = "".join(f"objects/pack/{rev}: {why}\n" for rev, why in lies.items())
        return [self._record(violation, patch_text=listed)]

    def _forged_loose(self, window: tuple[float, float]) -> list[Violation]:
        """Loose objects made since the baseline that are not what they are named: removed."""
        common = self.repo.common_dir
        named: set[str] = set()
        whole = False
        if self._objects is not None:
            named, whole = self._objects.loose_named()
        first = self._loose_seen is None
        if self._loose_seen is None:
            self._loose_seen = set()
            self._loose_held = frozenset(integrity.held_loose(self._held))
        forged, unread = integrity.forged_loose(
            common,
            self._loose_seen,
            held=self._loose_held,
            named=named | self._loose_unread,
            # Every one not known good: the first time (some were made before the change test
            # watched), without the change test, and at the last scan (whatever it missed).
            listing=first or not whole or self._closing.is_set(),
        )
        self._loose_unread = frozenset(unread)
        if not forged:
            return []
        if self.restore:
            for path in forged:
                with contextlib.suppress(OSError):  # not removed is recorded as such
                    path.unlink()
        # Told once while it stays; removed, one planted again is told again.
        self._loose_seen.update(p.parent.name + p.name for p in forged if p.exists())
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        labels = tuple(path.relative_to(common).as_posix() for path in forged)
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=labels,
            suspects=suspects,
            restored=not any(path.exists() for path in forged),
        )
        listed = "".join(f"{label}: its bytes are another object's\n" for label in labels)
        return [self._record(violation, patch_text=listed)]

    def _scan_midx(self, window: tuple[float, float]) -> list[Violation]:
        """A multi-pack-index that changed and lies about where objects are: removed."""
        common = self.repo.common_dir
        now = integrity.midx_print(common)
        if now == self._midx:
            return []
        wrong = integrity.lying_midx(self.repo.root)
        if wrong and integrity.midx_print(common) != now:
            return []  # rewritten or removed while it was verified (a repack): next scan
        if not wrong:  # git's own (`git multi-pack-index write`, a repack that writes one)
            self._midx = now
            return []
        self._changes.mark_all()  # git showed your checkouts' files through it
        if self.restore:
            with contextlib.suppress(OSError):  # not removed is recorded as such
                integrity.drop_midx(common)
        self._midx = integrity.midx_print(common)
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=(integrity.MIDX,),
            suspects=suspects,
            restored=not self._midx,
        )
        return [self._record(violation, patch_text=f"git multi-pack-index verify:\n{wrong}\n")]

    def _swapped_store(self, began: float) -> list[Violation]:
        """Another directory (or nothing) where the object store was: the store put back.

        An agent that moves ``objects`` aside and makes another in its place gets around the
        sandbox's read-only ``objects/info`` (the new one's ``alternates`` is its own). The
        store is put back from where it went in the git dir, found by its inode:
        a directory of the agent's cannot pass for it. What was in its place goes to the
        guard's directory, its objects linked into the store first (nothing is deleted). A
        symlink there is :meth:`_planted_links`'s.
        """
        common = self.repo.common_dir
        now = integrity.store_id(common)
        if self._store is None or now == self._store or (common / "objects").is_symlink():
            return []
        window = (self._objects_checked, began)
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:  # nobody of ours was running: the user's doing, the new baseline
            self._store = now
            return []
        found = integrity.find_store(common, self._store)
        text = "objects: another directory in place of the object store"
        restored = False
        if found is None:
            text += ", which is no longer in the git dir; left as it is"
            self._store = now  # told once
        elif self.restore:
            aside = self._dir / f"replaced-objects-{time.time_ns()}"
            try:
                integrity.put_store_back(common, found, aside)
                restored = True
                text += f", which was moved to {found.relative_to(common)}; put back (what was"
                text += " in its place"
                text += f" is kept at {aside}, its objects linked into the store)"
            except OSError as exc:
                text += f", which was moved to {found.relative_to(common)}; cannot put it back:"
                text += f" {exc}"
                self._store = now
        else:
            text += f", which was moved to {found.relative_to(common)}"
            self._store = now
        if restored and self._objects is not None:  # its watches followed the store away
            self._objects.close()
            self._objects = ObjectWatch(common / "objects")
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=("objects",),
            suspects=suspects,
            restored=restored,
        )
        return [self._record(violation, patch_text=text + "\n")]

    def _planted_links(self, window: tuple[float, float]) -> list[Violation]:
        """Symbolic links where git keeps objects: made real again, before anything is read."""
        common = self.repo.common_dir
        links = integrity.planted_links(common)
        if not links:
            return []
        restored = True
        listed = []
        for link in links:
            target = link.readlink() if link.is_symlink() else "?"
            listed.append(f"{link.relative_to(common).as_posix()}: a link to {target}\n")
            if self.restore:
                try:
                    integrity.unplant(link)
                except OSError:
                    restored = False
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(link.relative_to(common).as_posix() for link in links),
            suspects=self._agents.suspects(window, exclude=()),
            restored=self.restore and restored,
        )
        return [self._record(violation, patch_text="".join(listed))]

    def _written_over(self, window: tuple[float, float], generation: int) -> list[Violation]:
        """Object files of the baseline whose names the store now gives to other content.

        The held files are put back in their place; a loose object rewritten in place, which
        the held link is too, can only be reported.
        """
        common = self.repo.common_dir
        since = self._held_seen[1]
        # A write stamps the coarse clock, which may lag this one a little: a second's margin.
        self._held_seen = (generation, max(since, time.time_ns() - 1_000_000_000))
        over = integrity.written_over(common, self._held)
        if self.restore and over:
            with contextlib.suppress(OSError):  # not put back is recorded as such
                integrity.put_back(over)
        rewritten = integrity.rewritten(common, self._held, since)
        if not over and not rewritten:
            return []
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return []  # no agent of ours was running: damage of another kind, not an attack
        left = {dest for _, dest in integrity.written_over(common, self._held)}
        left |= set(rewritten)
        listed = [
            *(f"{d.relative_to(common).as_posix()}: another object written under its name\n"
              for _, d in over),
            *(f"{d.relative_to(common).as_posix()}: rewritten in place, its content no longer"
              " hashes to its name (the guard's hold on it is the same file: no copy to put"
              " back)\n" for d in rewritten),
        ]  # fmt: skip
        violation = Violation(
            number=0,
            where=REPOSITORY,
            git_files=tuple(
                d.relative_to(common).as_posix()
                for d in sorted({d for _, d in over} | set(rewritten))
            ),
            suspects=suspects,
            restored=not left,
        )
        return [self._record(violation, patch_text="".join(listed))]

    def _broken(
        self, broken: list[str], again: set[str], refs: dict[str, str], window: tuple[float, float]
    ) -> list[Violation]:
        """Record the refs found *broken* (*again*: still, after recovery from the pack)."""
        names = [ref for ref in broken if (ref, refs[ref]) not in self._reported]
        # Told once while it stays broken; made whole, breaking it again is told again.
        self._reported |= {(ref, refs[ref]) for ref in again}
        if not names:
            return []
        kept, set_back = [], []
        root, common = self.repo.root, self.repo.common_dir
        for ref in (r for r in names if r in again):
            good = self._good.get(ref) or integrity.last_complete(root, common, ref)
            if good is None or good == refs[ref]:
                continue
            # A ref that names a missing object makes git gc, git log --all and for-each-ref
            # fail: it goes back to its last complete tip (what it named is gone for good).
            if self.restore and restore_ref(root, ref, good, refs[ref]):
                self._refs[ref] = self._good[ref] = good
                with contextlib.suppress(CommandError):  # its reflog entries naming it too
                    git.git(root, "reflog", "expire", "--stale-fix", "--expire=never",
                            "--expire-unreachable=never", ref)  # fmt: skip
                set_back.append(f"{short_ref(ref)} at {good[:12]}")
                continue
            keep = integrity.keep_ref(ref)
            with contextlib.suppress(CommandError):
                git.git(root, "update-ref", keep, good)
                self._refs[keep] = good
                kept.append(short_ref(keep))
        owners = {ref_owner(ref) for ref in names}
        # Not even a branch's own agent is above suspicion: a task that starts from another's
        # tip shares its objects.
        violation = Violation(
            number=0,
            where=next(iter(owners)) or MAIN if len(owners) == 1 else MAIN,
            broken=tuple(names),
            kept=tuple(kept),
            set_back=tuple(set_back),
            suspects=self._agents.suspects(window, exclude=()),
            restored=not (set(names) & again),
        )
        return [self._record(violation, patch_text=None)]

    def _keep_task_work(self, refs: dict[str, str], pack_dir: Path, *, only: str = "") -> None:
        """Copy the objects of task branches that moved since last time into the kept pack.

        *refs*: every watched ref (what the user's reach stays out of the pack); *only*: the
        one task branch whose tip there is new (the others may be older than the guard knows).
        Tasks that finish together share one pack: a caller queues its tips, and whichever
        caller takes the pack's lock first packs every queued one. Each caller still packs its
        own under the lock when they are not packed yet (the pack that took them failed, or
        packed another tip of the same branch), and a shared pack that fails is made again
        with the caller's own tips only.
        """
        mine = {
            ref: tip
            for ref, tip in refs.items()
            if (ref == only if only else ref_owner(ref)) and self._packed.get(ref) != tip
        }
        with self._queue_lock:
            self._queued.update(mine)
        with self._keep_lock:  # not the guard's lock: a finishing task packs without it
            with self._queue_lock:
                queued, self._queued = self._queued, {}
            try:
                self._keep_moved(refs, {**queued, **mine}, pack_dir)
            except CommandError:
                if queued.keys() <= mine.keys():
                    raise
                # Another's tip failed the shared pack (its objects gone): pack ours alone;
                # each of the others packs its own once it holds the lock.
                self._keep_moved(refs, mine, pack_dir)

    def _keep_moved(self, refs: dict[str, str], tips: dict[str, str], pack_dir: Path) -> None:
        user = {s for r, s in refs.items() if ref_owner(r) is None}
        moved = {ref: tip for ref, tip in tips.items() if self._packed.get(ref) != tip}
        if not moved:
            return
        # One pack for every branch that moved: what they added since last kept.
        previous = {self._packed[ref] for ref in moved if ref in self._packed}
        new = sorted(set(moved.values()))
        integrity.keep(self.repo.root, pack_dir, new, sorted(user | previous))
        self._packed.update(moved)

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

    def _intend(
        self, violation: Violation, patch_text: str | None, *, worktree: Path | None = None
    ) -> Violation:
        """*violation*, numbered and noted before its put-back (a task's *worktree* made again).

        A manager killed before it is recorded has the next command finish the put-back where
        it can, and record and apply it (:func:`cut_verdicts`).
        """
        with self._new_lock:
            found = self._numbered(violation, patch_text)
        self._note(found, recorded=False, worktree=worktree)
        return found

    def _record(self, violation: Violation, *, patch_text: str | None) -> Violation:
        with self._new_lock:  # numbered in the order drain() hands them over
            return self._number(violation, patch_text)

    def _number(self, violation: Violation, patch_text: str | None) -> Violation:
        done = violation if violation.number else self._numbered(violation, patch_text)
        self._log(f"violation {done.number}: {done.summary()}; suspects {list(done.suspects)}")
        self._new.append(done)
        self._note(done, recorded=True)  # before it is on record: applied, if not, next time
        if self._on_record is not None:
            self._on_record(done)
        return done

    def _note(self, violation: Violation, *, recorded: bool, worktree: Path | None = None) -> None:
        """Note *violation* (*recorded*: handed to the run) until the run settles it."""
        if self._on_record is None:
            return
        note = self._noted.get(violation.number)
        if note is None:
            note = self._dir / _VERDICTS / f"{time.time_ns()}-{violation.number}.json"
            self._noted[violation.number] = note
        data = {"violation": violation.as_dict(), "recorded": recorded}
        if worktree is not None:
            data["worktree"] = str(worktree)
        with contextlib.suppress(OSError):  # not noted: applied as ever, unless killed
            # Whole or not at all: written aside, then renamed over.
            note.parent.mkdir(parents=True, exist_ok=True)
            aside = note.with_suffix(".tmp")
            aside.write_text(json.dumps(data), encoding="utf-8")
            aside.replace(note)

    def settled(self, violations: Iterable[Violation]) -> None:
        """The run recorded and applied *violations* (failed their suspects): notes dropped."""
        for violation in violations:
            note = self._noted.pop(violation.number, None)
            if note is not None:
                note.unlink(missing_ok=True)

    def _numbered(self, violation: Violation, patch_text: str | None) -> Violation:
        self._count += 1
        patch = ""
        if patch_text:
            if violation.where == MAIN:
                name = "main"
            elif violation.where.startswith(WORKTREE_PREFIX):
                name = "worktree"
            else:
                name = violation.where
            path = self._dir / f"outside-{self._count}-{name}.patch"
            # A credential of yours beside the changed line (a remote's URL) stays out of it.
            # A name that is not UTF-8 (kept as surrogates) is written back as its own bytes.
            path.write_text(redact(patch_text), encoding="utf-8", errors="surrogateescape")
            patch = str(path)
        return dataclasses.replace(violation, number=self._count, patch=patch)


def _last_patch_number(work_dir: Path) -> int:
    """The highest N of the ``outside-N-*.patch`` files in *work_dir* (0: none)."""
    numbers = [0]
    with contextlib.suppress(OSError):
        for path in work_dir.glob("outside-*-*.patch"):
            number = path.name.split("-", 2)[1]
            if number.isdigit():
                numbers.append(int(number))
    return max(numbers)


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


def _move_back(repo: git.Repo, moved: Path, path: Path) -> None:
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
        back = remotes.finish(repo.root, repo.common_dir, work_dir / _REMOTES_NOTE)
        if back:
            done.append(f"remote-tracking refs put back (cut short): {back}")
    for note in sorted((work_dir / _MOVING).glob("*")):
        with contextlib.suppress(ValueError, SwarmError, OSError, UnicodeDecodeError):
            moved, path = map(Path, json.loads(fs.read_file(note)))
            admin = repo.common_dir / "worktrees" / note.name
            if not os.path.lexists(path) and _moved_to(admin, path) == moved:
                _move_back(repo, moved, path)
                done.append(f"worktree moved back from {moved} to {path} (cut short)")
        note.unlink(missing_ok=True)
    return done


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
    for aside in (work_dir / _VERDICTS).glob("*.tmp"):  # a note whose writing was cut short
        aside.unlink(missing_ok=True)
    for note in sorted((work_dir / _VERDICTS).glob("*.json"), key=_note_order):
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
        whole = worktrees.own_admin(repo, path) is not None
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


def _moved_to(admin: Path, path: Path) -> Path | None:
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

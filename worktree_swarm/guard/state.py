"""The guard's state: what it watches and the baselines it keeps of each.

:class:`GuardState` sets up every field the guard's checks share; the records of a watched
checkout (:class:`Place`), of the run's task worktrees and of the remote-tracking refs live
here with it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from worktree_swarm.git import repo as git
from worktree_swarm.guard import graph, held_files, packfiles, remotes, store_dir, surface_entry
from worktree_swarm.guard.attribution import Agents
from worktree_swarm.guard.changes import Changes
from worktree_swarm.guard.channel import Channel
from worktree_swarm.guard.dir_modes import DirModes
from worktree_swarm.guard.file_stats import FileStats
from worktree_swarm.guard.lock import TurnLock
from worktree_swarm.guard.model import MAIN, WORKTREE_PREFIX, ScanFailure, Snapshot, Violation
from worktree_swarm.guard.objects import ObjectWatch

MIN_INTERVAL = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Unwatched:
    """Files of your checkout that changed while no manager of the run watched it."""

    paths: tuple[str, ...]
    patch: str  # from the last baseline to now: `git apply -R` undoes them

    def as_dict(self) -> dict[str, object]:
        """As the run's event records it."""
        return {"paths": list(self.paths), "patch": self.patch}


@dataclass(slots=True, kw_only=True)
class Place:
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
    # A user's checkout: its named pipes and device nodes (path -> inode) that are yours.
    specials: dict[str, int] = field(default_factory=dict)

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
    merges: set[str] = field(default_factory=set)  # a merge's worktrees' admin dirs
    # task -> its worktree root's (device, inode) when swarm last made its worktree there
    roots: dict[str, tuple[int, int]] = field(default_factory=dict)
    lost: dict[str, Violation] = field(default_factory=dict)  # busy task -> how it went
    # Tasks whose worktree's files were found gone while git's registration still named them:
    # a `git worktree move` between its rename and its note of the new place, or an `rm -rf`.
    # Judged on the next scan; task -> when the window its suspects are taken from begins.
    doubted: dict[str, float] = field(default_factory=dict)
    # Tasks whose worktree root was found gone with a sibling's worktree: their worktrees went
    # with it, even where a put-back has made the root again since (maybe on the same inode).
    rootless: set[str] = field(default_factory=set)


@dataclass(slots=True, kw_only=True)
class _Remotes:
    """The remote-tracking refs' baseline, and what was put back of them."""

    base: remotes.Remotes | None = None  # None: not read yet (the read failed)
    seen: float  # when they were last found as their baseline
    notes: list[remotes.Note] = field(default_factory=list)  # put back, not yet drained
    read: dict[str, str] | None = None  # as this scan's read of the watched refs found them
    read_at: float = 0.0  # when that read began


class GuardState:
    """The state of one guard: what it watches, the baselines, what it has found so far.

    The checks (the mixins of :class:`~worktree_swarm.guard.watcher.Guard`) share it; the
    locks that guard each part are described where they are made.
    """

    # The object store's generation when the held files were last compared with it, and the
    # time from which a held file changed since is checked against its name.
    _held_seen = (-1, 0)
    _packs: frozenset[str] = frozenset()  # the pack indexes of the store known not to lie
    _midx: packfiles.MidxPrint = ()  # the multi-pack-index as last found not to lie
    _loose_seen: set[str] | None = None  # the loose objects known to hold what they are named
    _loose_held: frozenset[str] = frozenset()  # the loose objects held (compared apart)
    _loose_unread: frozenset[str] = frozenset()  # could not be read last time: read next time
    _unlisted = False  # a directory of loose objects could not be listed: list them next time
    # Directories of the store the hold missed in part (held again by each scan of the objects).
    _unheld: frozenset[str] | set[str] = frozenset()
    _partly: dict[str, str]  # job -> why a part of it failed (the rest done) this time
    _worktrees_checked = 0.0  # when task worktrees were last all found where swarm made them
    _packs_verified: frozenset[str] | set[str] = frozenset()  # packs new to this scan
    _rev_check: frozenset[str] = frozenset()  # packs whose .rev to check (index names)
    # A pack whose check was killed -> its window's start (replaced, never changed in place).
    _unsure_since: Mapping[str, float] = MappingProxyType({})
    _noted: dict[int, Path]  # violation number -> its note, until the run settles it
    _unwatched: Unwatched | None  # what start() found changed while no manager watched
    _resumable: bool  # its baseline of your checkout is kept for a resuming manager
    _setuid: dict[str, int]  # the setuid and setgid files of the git dir: their bits
    _failing: dict[str, str]  # job -> reason of its current streak of failures
    _denied: set[str]  # the jobs whose last failure was a permission denied
    _setuid_due = 0.0  # monotonic time of the next walk for them
    _store: store_dir.StoreId | None = None  # the object store's directory, when watched
    _dir_modes: DirModes | None = None  # the admin dirs' and task worktrees' bits, watched
    _last_surface: surface_entry.Surface | None = None  # git's files as a killed manager left them
    _surface_dirty = False  # the baseline of git's files changed since surface.json was saved
    # Changed only by git's own copies of config.worktree made or removed with admin dirs, which
    # a resumed guard takes as git's too: saved with the next change, or SURFACE_SAVE_EVERY after
    # the last save (monotonic time _surface_due).
    _surface_owed = False
    _surface_due = 0.0

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
        merges: Callable[[Path], bool] | None = None,
    ) -> None:
        self.repo = repo
        self.restore = restore
        # Whether a task's branch is another swarm command's to move now (a run's, beside a
        # merge): that command's guard judges its moves. *answers*: see Channel. *merges*:
        # whether a worktree (its real path) is a merge's of a recorded run, a `swarm merge`
        # beside this run, whose submodules' git dirs are that merge's (surface_checks).
        self._others, self._merge_worktree = others, merges
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
        self._held = work_dir / held_files.HELD
        self._lock = TurnLock()
        self._places: dict[str, Place] = {}
        self._busy: dict[str, int] = {}
        self._refs: dict[str, str] = {}
        self._agents = Agents()
        self._channel = Channel(repo.state_dir, self._agents, answers=answers)
        self._evidence: dict[str, str] = {}  # ref -> task whose worktree HEAD was on it
        self._new: list[Violation] = []
        self._failures: list[ScanFailure] = []
        self._failing, self._denied, self._partly = {}, set(), {}
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
        self._surface: surface_entry.Surface = {}
        self._hooks: tuple[Path, ...] = ()  # the core.hooksPath directories
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
        self._interval = MIN_INTERVAL
        self._read: dict[str, str] = {}  # every watched ref, as the last refs scan read them
        # Files' stats and names kept while their watches are quiet, for all the checks; which
        # places may have changed (inotify and stat signatures).
        self._file_stats = stats = FileStats()
        # The sweep's next step (monotonic time).
        self._changes, self._sweep_at = Changes(stats), 0.0
        self._linked: dict[Path, Path] = {}  # the user's linked worktrees -> their git dirs
        self._trees, self._remotes, self._noted = _Worktrees(), _Remotes(seen=now), {}
        self._unwatched, self._resumable = None, False  # see keep_base_for_resume
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None


def _last_patch_number(work_dir: Path) -> int:
    """The highest N of the ``outside-N-*.patch`` files in *work_dir* (0: none)."""
    numbers = [0]
    with contextlib.suppress(OSError):
        for path in work_dir.glob("outside-*-*.patch"):
            number = path.name.split("-", 2)[1]
            if number.isdigit():
                numbers.append(int(number))
    return max(numbers)

"""Guard rails: notice when an agent writes outside its own worktree, and undo it.

What is watched, against a baseline recorded when watching starts:

- the user's checkout: HEAD (branch or commit), the staged entries of its index, and the
  content of every file git would see (tracked and untracked, not ignored), captured as a
  tree object through a private scratch index, so the user's own uncommitted edits are part
  of the baseline and can be put back byte for byte;
- every local branch and tag: only a task's own branch may move, and only while swarm works
  on that task (its agent, its checkpoint, its checks);
- every task worktree of the run while nothing of its own runs in it (after its task ended,
  or while it waits for a rate limit): any change there was made by someone else.

A change is a *violation*. Its suspects are the agents that were alive since the previous
clean scan, narrowed by the changed files' modification times and by which agents' processes
sit in the changed directory. The foreign changes are saved as a patch under the run's
directory and, unless the run allows outside writes, the watched place is restored to its
baseline: refs and HEAD moved back, the index rewritten, files put back from the baseline
tree and new files removed. Nothing is lost: what is undone is in the patch (and its objects
stay in the object store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from worktree_swarm import git, proc
from worktree_swarm.errors import CommandError, SwarmError
from worktree_swarm.models import ProcessIdentity

MAIN = "main checkout"
STAMP = "refs-changed.stamp"  # touched by swarm commands that move refs (merge, clean)
_MIN_INTERVAL = 1.0
_MTIME_SLACK = 1.0
_SHOWN = 5  # paths named in a one-line summary

RefMove = tuple[str, str | None, str | None]  # (ref, before, after); None: absent
_REF_PREFIXES = ("refs/heads/", "refs/tags/")


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The observable state of one checkout."""

    head_ref: str | None  # refs/heads/x, or None when HEAD is detached
    head: str | None
    index: str  # digest of the staged entries (mode, object, stage, path)
    tree: str  # the files git would see, as a tree object


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """One write outside an agent's own worktree, and what was done about it."""

    number: int
    where: str  # MAIN, or the id of the task whose worktree or branch was touched
    paths: tuple[str, ...] = ()
    refs: tuple[RefMove, ...] = ()  # (ref, before, after)
    head: str = ""  # how HEAD moved, when it did
    index_changed: bool = False
    suspects: tuple[str, ...] = ()
    patch: str = ""
    restored: bool = False

    def summary(self) -> str:
        """One line naming the place and what changed in it."""
        place = "the main checkout" if self.where == MAIN else f"task {self.where}'s worktree"
        parts = []
        if self.paths:
            shown = ", ".join(self.paths[:_SHOWN]) + (" ..." if len(self.paths) > _SHOWN else "")
            parts.append(f"files {shown}")
        if self.head:
            parts.append(self.head)
        if self.index_changed:
            parts.append("its staged changes")
        parts += [f"{_short_ref(r)} moved" for r, _, _ in self.refs]
        what = "; ".join(parts) or "its state"
        return f"{what} in {place}" if self.paths or self.index_changed else what

    def reason(self, task_id: str) -> str:
        """The failure reason recorded on a suspect task."""
        who = "" if len(self.suspects) == 1 else (
            f" (or one of {', '.join(s for s in self.suspects if s != task_id)}, "
            "running at the same time)"
        )  # fmt: skip
        fate = "restored" if self.restored else "left as found"
        return f"wrote outside its worktree{who}: {self.summary()}; {fate}, patch {self.patch}"

    def as_dict(self) -> dict[str, object]:
        """The JSON form recorded as an ``outside_write`` event."""
        return {
            "number": self.number,
            "where": self.where,
            "paths": list(self.paths),
            "refs": [{"ref": r, "before": b, "after": a} for r, b, a in self.refs],
            "head": self.head,
            "index_changed": self.index_changed,
            "suspects": list(self.suspects),
            "patch": self.patch,
            "restored": self.restored,
            "summary": self.summary(),
        }


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


@dataclass(slots=True, kw_only=True)
class _Agent:
    intervals: list[list[float | None]] = field(default_factory=list)
    identity: ProcessIdentity | None = None


class Guard:
    """Watches the user's checkout, the refs and idle task worktrees of one run.

    Thread-safe: workers call :meth:`busy`, :meth:`agent_started`, :meth:`agent_ended` and
    :meth:`scan`; a thread of its own scans periodically; the run loop calls :meth:`drain`.
    """

    def __init__(
        self, repo: git.Repo, *, work_dir: Path, restore: bool, exclude: Sequence[Path] = ()
    ) -> None:
        self.repo = repo
        self.restore = restore
        # Directories inside the checkout that are not the user's (a worktree root there).
        root = Path(os.path.realpath(repo.root))
        self._exclude = tuple(
            f":(exclude,top){Path(os.path.realpath(p)).relative_to(root).as_posix()}"
            for p in exclude
            if Path(os.path.realpath(p)).is_relative_to(root) and Path(os.path.realpath(p)) != root
        )
        self._dir = work_dir
        self._lock = threading.RLock()
        self._places: dict[str, _Place] = {}
        self._busy: dict[str, int] = {}
        self._refs: dict[str, str] = {}
        self._agents: dict[str, _Agent] = {}
        self._agents_lock = threading.Lock()  # not the scan's lock: starting never waits on it
        self._evidence: dict[str, str] = {}  # ref -> task whose worktree HEAD was on it
        self._new: list[Violation] = []
        self._new_lock = threading.Lock()  # drain() must not wait for a scan
        self._count = 0
        self._refs_checked = time.time()
        self._interval = _MIN_INTERVAL
        self._stamp = self._stamp_time()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Record the baselines of the user's checkout and of every branch and tag."""
        with self._lock:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._watch(MAIN, self.repo.root)
            self._refs = self._read_refs()
            self._refs_checked = time.time()

    @contextlib.contextmanager
    def busy(self, task_id: str, path: Path) -> Iterator[None]:
        """While inside, *task_id*'s worktree and branch are its own to change.

        On leaving (when nothing else holds it busy) the worktree gets a fresh baseline and
        is watched from then on.
        """
        with self._lock:
            self._busy[task_id] = self._busy.get(task_id, 0) + 1
            self._places.pop(task_id, None)
        try:
            yield
        finally:
            self._release(task_id, path)

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
                if place is not None and place.path.is_dir():
                    self._scan_place(place, time.time(), quick=True)
                self._busy[task_id] = self._busy.get(task_id, 0) + 1

    def agent_started(self, task_id: str, identity: ProcessIdentity) -> None:
        """Note that *task_id*'s agent runs from now on."""
        with self._agents_lock:
            agent = self._agents.setdefault(task_id, _Agent())
            agent.intervals.append([time.time(), None])
            agent.identity = identity

    def agent_ended(self, task_id: str) -> None:
        """Note that *task_id*'s agent has ended."""
        with self._agents_lock:
            agent = self._agents.get(task_id)
            if agent and agent.intervals and agent.intervals[-1][1] is None:
                agent.intervals[-1][1] = time.time()
                agent.identity = None

    def own_head(self, task_id: str, path: Path, branch: str) -> Violation | None:
        """Put *path*'s HEAD back on *branch* if its agent switched it elsewhere.

        Called after each attempt, before the checkpoint, so the checkpoint lands on the
        task's branch. The ref HEAD was on is remembered as evidence for :meth:`scan`.
        """
        want = f"refs/heads/{branch}"
        with contextlib.suppress(OSError, SwarmError):  # the fast way: read the HEAD file
            if (_index_path(path).parent / "HEAD").read_text() == f"ref: {want}\n":
                return None
        head_ref = _symbolic_head(path)
        if head_ref == want:
            return None
        head = git.rev_parse_in(path, "HEAD")
        with self._lock:
            if head_ref is not None:
                self._evidence[head_ref] = task_id
            where = _short_ref(head_ref) if head_ref else f"a detached HEAD at {(head or '?')[:12]}"
            git.git(path, "symbolic-ref", "HEAD", want)
            return self._record(
                Violation(
                    number=0,
                    where=task_id,
                    head=f"its agent switched its worktree from {branch} to {where}",
                    suspects=(task_id,),
                    restored=True,
                ),
                patch_text=None,
            )

    # -- scanning ----------------------------------------------------------------------------

    def watch_in_background(self) -> None:
        """Scan everything from a thread of its own until :meth:`close`."""
        self._thread = threading.Thread(target=self._loop, name="swarm-guard", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background scans (a last :meth:`scan` is the caller's to make)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._closing.wait(self._interval):
            with contextlib.suppress(SwarmError, OSError):
                self.scan()  # a failure (a git command mid-way) is retried next time

    def scan(self) -> list[Violation]:
        """Compare what is watched with its baseline; handle and return new violations."""
        began = time.time()
        found: list[Violation] = []
        with self._lock:
            window = (self._refs_checked, began)
            self._refs_checked = began
            stamp = self._stamp_time()
            if stamp != self._stamp:
                # A swarm command (merge, clean) moved refs or the checkout on purpose.
                self._stamp = stamp
                self._refs = self._read_refs()
                self._watch(MAIN, self.repo.root)
            else:
                found += self._scan_refs(window)
            main = self._places.get(MAIN)
            if main is not None:
                found += self._scan_place(main, began, quick=False)
            places = list(self._places.values())
        for place in places:  # one at a time, so workers are not held up by a long scan
            with self._lock:
                if place.where == MAIN or self._places.get(place.where) is not place:
                    continue
                if not place.path.is_dir():
                    del self._places[place.where]  # removed; its work is on its branch
                    continue
                found += self._scan_place(place, time.time(), quick=True)
        self._interval = max(_MIN_INTERVAL, 10 * (time.time() - began))
        return found

    def drain(self) -> list[Violation]:
        """Violations found since the last call (for the run loop to record and apply)."""
        with self._new_lock:
            new, self._new = self._new, []
            return new

    # -- internals ---------------------------------------------------------------------------

    def _release(self, task_id: str, path: Path) -> None:
        """One holder less; the last one hands the worktree over to the guard's watch."""
        with self._lock:
            self._busy[task_id] -= 1
            if self._busy[task_id] == 0:
                del self._busy[task_id]
                self._settle(task_id, path)

    def _settle(self, task_id: str, path: Path) -> None:
        branch = f"refs/heads/swarm/{task_id}"
        tip = None
        if path.is_dir():
            self._watch(task_id, path)
            status = self._places[task_id].status
            if _status_field(status, "head") == branch.removeprefix("refs/heads/"):
                tip = _status_field(status, "oid")
        if tip is None:
            tip = git.rev_parse(self.repo, branch)
        if tip is not None:
            self._refs[branch] = tip

    def _watch(self, where: str, path: Path) -> None:
        name = "main" if where == MAIN else f"task-{where}"
        scratch = self._dir / f"{name}.scratch-index"
        saved = self._dir / f"{name}.index"
        real = _index_path(path)
        scratch.unlink(missing_ok=True)
        # A manager killed while git wrote it leaves git's lock; the file is this manager's own.
        scratch.with_name(scratch.name + ".lock").unlink(missing_ok=True)
        if real.is_file():
            shutil.copyfile(real, scratch)  # seeds git's stat cache: only changed files hash
            shutil.copyfile(real, saved)
        else:
            saved.unlink(missing_ok=True)
        began = time.time()
        # The user's checkout is always compared in full; a task worktree first by status.
        status = "" if where == MAIN else _status(path)
        base = None
        if where == MAIN or not _is_clean(status):
            base = _capture(path, scratch, self._exclude if where == MAIN else ())
        self._places[where] = _Place(
            where=where,
            path=path,
            scratch=scratch,
            saved_index=saved,
            base=base,
            checked=began,
            status=status,
        )

    def _scan_refs(self, window: tuple[float, float]) -> list[Violation]:
        by_place: dict[str, list[RefMove]] = {}
        for move in self._moved_refs():
            by_place.setdefault(_ref_owner(move[0]) or MAIN, []).append(move)
        found = []
        for where, refs in by_place.items():
            violation = self._refs_moved(where, refs, window)
            if violation is not None:
                found.append(violation)
        return found

    def _moved_refs(self) -> list[RefMove]:
        now = self._read_refs()
        moved: list[RefMove] = []
        for ref in sorted(set(now) | set(self._refs)):
            before, after = self._refs.get(ref), now.get(ref)
            if before != after and _ref_owner(ref) not in self._busy:
                moved.append((ref, before, after))  # not a task's own branch while it works
        return moved

    def _refs_moved(
        self,
        where: str,
        refs: list[RefMove],
        window: tuple[float, float],
    ) -> Violation | None:
        exclude = () if where == MAIN else (where,)
        evidence = {self._evidence.pop(r, "") for r, _, _ in refs} - {""}
        suspects = tuple(sorted(evidence)) or self._suspects(window, exclude=exclude)
        patch = "".join(_ref_patch(self.repo.root, r, b, a) for r, b, a in refs)
        restored = bool(suspects) and self.restore
        restored = restored and all(_restore_ref(self.repo.root, r, b, a) for r, b, a in refs)
        if not restored:
            for r, _, a in refs:
                if a is None:
                    self._refs.pop(r, None)
                else:
                    self._refs[r] = a
        if not suspects:
            return None  # moved while no agent ran: the user's own doing, not ours to undo
        return self._record(
            Violation(
                number=0,
                where=where,
                refs=tuple(refs),
                suspects=suspects,
                restored=restored,
            ),
            patch_text=patch,
        )

    def _scan_place(self, place: _Place, began: float, *, quick: bool) -> list[Violation]:
        """Check *place*; *quick* trusts an unchanged `git status` (blind to re-edited files)."""
        window = (place.checked, began)
        try:
            if quick and _status(place.path) == place.status:
                place.checked = began
                return []
            now = _capture(place.path, place.scratch, self._excludes(place))
            base = self._base(place)
        except SwarmError:
            return []  # mid-way through someone's git command; look again next time
        if now == base:
            place.checked = began
            return []
        paths = _changed_paths(place.path, base.tree, now.tree)
        head = ""
        if (now.head_ref, now.head) != (base.head_ref, base.head):
            head = f"HEAD moved from {_describe_head(base)} to {_describe_head(now)}"
        exclude = () if place.where == MAIN else (place.where,)
        suspects = self._suspects(window, exclude=exclude)
        suspects = self._narrow(suspects, place.path, paths) or suspects
        if not suspects:
            # Nobody of ours was running: the user worked here. Take it as the new baseline.
            self._watch(place.where, place.path)
            return []
        patch = _files_patch(place.path, base.tree, now.tree, paths)
        restored = False
        if self.restore:
            restored = _restore_place(place, base, now, self._excludes(place))
        if restored:
            place.checked = time.time()
        else:
            self._watch(place.where, place.path)
        violation = self._record(
            Violation(
                number=0,
                where=place.where,
                paths=tuple(paths),
                head=head,
                index_changed=now.index != base.index,
                suspects=suspects,
                restored=restored,
            ),
            patch_text=patch,
        )
        return [violation]

    def _base(self, place: _Place) -> Snapshot:
        """*place*'s baseline; one that was clean is rebuilt from its commit and saved index."""
        if place.base is None:
            oid = _status_field(place.status, "oid")
            head = None if oid in {"", "(initial)"} else oid
            branch = _status_field(place.status, "head")
            staged = _git_env(
                place.path, {"GIT_INDEX_FILE": str(place.saved_index)}, "ls-files", "--stage", "-z"
            )
            place.base = Snapshot(
                head_ref=None if branch in {"", "(detached)"} else f"refs/heads/{branch}",
                head=head,
                index=hashlib.sha256(staged.encode()).hexdigest(),
                tree=git.git(place.path, "rev-parse", f"{oid}^{{tree}}").strip(),
            )
        return place.base

    def _excludes(self, place: _Place) -> tuple[str, ...]:
        return self._exclude if place.where == MAIN else ()

    def _record(self, violation: Violation, *, patch_text: str | None) -> Violation:
        self._count += 1
        patch = ""
        if patch_text:
            name = "main" if violation.where == MAIN else violation.where
            path = self._dir / f"outside-{self._count}-{name}.patch"
            path.write_text(patch_text, encoding="utf-8")
            patch = str(path)
        done = dataclasses.replace(violation, number=self._count, patch=patch)
        with self._new_lock:
            self._new.append(done)
        return done

    def _suspects(self, window: tuple[float, float], *, exclude: Sequence[str]) -> tuple[str, ...]:
        start, end = window
        found = []
        for task_id, agent in self._agents_now().items():
            if task_id in exclude:
                continue
            for began, ended in agent.intervals:
                if began is not None and began <= end and (ended is None or ended >= start):
                    found.append(task_id)
                    break
        return tuple(sorted(found))

    def _narrow(
        self, suspects: tuple[str, ...], root: Path, paths: Sequence[str]
    ) -> tuple[str, ...]:
        """Suspects with a process in *root* now, else those alive when the files changed."""
        agents = self._agents_now()
        inside = []
        for task_id in suspects:
            identity = agents[task_id].identity
            if identity is not None and _has_process_in(identity, root):
                inside.append(task_id)
        if inside:
            return tuple(inside)
        mtimes = []
        for rel in paths:
            with contextlib.suppress(OSError):
                mtimes.append((root / rel).lstat().st_mtime)
        if not mtimes:
            return ()
        alive = []
        for task_id in suspects:
            spans = agents[task_id].intervals
            if any(
                (b or 0) - _MTIME_SLACK <= m <= (e or float("inf")) + _MTIME_SLACK
                for m in mtimes
                for b, e in spans
            ):
                alive.append(task_id)
        return tuple(alive)

    def _agents_now(self) -> dict[str, _Agent]:
        with self._agents_lock:
            return {
                t: _Agent(intervals=[list(i) for i in a.intervals], identity=a.identity)
                for t, a in self._agents.items()
            }

    def _read_refs(self) -> dict[str, str]:
        out = git.git(
            self.repo.root, "for-each-ref", "--format=%(refname) %(objectname)", *_REF_PREFIXES
        )
        refs = {}
        for line in out.splitlines():
            name, _, sha = line.partition(" ")
            refs[name] = sha
        return refs

    def _stamp_time(self) -> float:
        try:
            return (self.repo.state_dir / STAMP).stat().st_mtime
        except OSError:
            return 0.0


def touch_stamp(repo: git.Repo) -> None:
    """Tell a running guard that a swarm command moved refs on purpose (merge, clean)."""
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    stamp = repo.state_dir / STAMP
    stamp.touch()


# -- snapshots --------------------------------------------------------------------------------


def _capture(path: Path, scratch: Path, exclude: Sequence[str] = ()) -> Snapshot:
    env = {"GIT_INDEX_FILE": str(scratch)}
    _git_env(path, env, "add", "--all", "--ignore-errors", "--", ".", *exclude)
    tree = _git_env(path, env, "write-tree").strip()
    staged = git.git(path, "ls-files", "--stage", "-z")
    return Snapshot(
        head_ref=_symbolic_head(path),
        head=git.rev_parse_in(path, "HEAD"),
        index=hashlib.sha256(staged.encode()).hexdigest(),
        tree=tree,
    )


def _status(path: Path) -> str:
    """`git status` of *path* with its branch and commit: a cheap test for any change."""
    return git.git(
        path,
        "--no-optional-locks",
        "status",
        "--porcelain=v2",
        "--branch",
        "-z",
        "--untracked-files=all",
    )


def _is_clean(status: str) -> bool:
    """Whether a ``status --porcelain=v2 --branch -z`` output lists no change at all."""
    return all(record.startswith("# ") for record in status.split("\0") if record)


def _status_field(status: str, name: str) -> str:
    """A ``# branch.<name>`` header of a ``status --porcelain=v2 --branch -z`` output."""
    prefix = f"# branch.{name} "
    return next((r[len(prefix) :] for r in status.split("\0") if r.startswith(prefix)), "")


def _git_env(cwd: Path, env: dict[str, str], *args: str) -> str:
    return proc.run(["git", *args], cwd=cwd, env=proc.clean_env(env)).stdout


def _index_path(path: Path) -> Path:
    return git.git_dir(path) / "index"


def _symbolic_head(path: Path) -> str | None:
    out = git.git(path, "symbolic-ref", "-q", "HEAD", check=False).strip()
    return out or None


def _changed_paths(path: Path, before: str, after: str) -> list[str]:
    out = git.git(path, "diff", "--name-only", "-z", "--no-renames", before, after, "--")
    return [p for p in out.split("\0") if p]


def _files_patch(path: Path, before: str, after: str, paths: Sequence[str]) -> str:
    if not paths:
        return ""
    header = f"# files changed in {path}: git apply this to get them back\n"
    return header + git.git(path, "diff", "--binary", "--no-renames", before, after, "--")


def _ref_patch(root: Path, ref: str, before: str | None, after: str | None) -> str:
    header = f"# {ref}: {before or '(none)'} -> {after or '(deleted)'}\n"
    if before is None or after is None:
        return header
    log = git.git(root, "log", "--format=# commit %H %s", f"{before}..{after}", check=False)
    diff = git.git(root, "diff", "--binary", before, after, "--", check=False)
    return header + log + diff


def _describe_head(snap: Snapshot) -> str:
    if snap.head_ref:
        return _short_ref(snap.head_ref)
    return f"detached {(snap.head or '?')[:12]}"


def _ref_owner(ref: str) -> str | None:
    """The task whose branch *ref* is, if it is one."""
    prefix = "refs/heads/swarm/"
    return ref.removeprefix(prefix) if ref.startswith(prefix) else None


def _short_ref(ref: str) -> str:
    return ref.removeprefix("refs/heads/").removeprefix("refs/")


def _has_process_in(identity: ProcessIdentity, root: Path) -> bool:
    real = Path(os.path.realpath(root))
    try:
        top = psutil.Process(identity.pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return False
    for p in procs:
        with contextlib.suppress(psutil.Error, OSError):
            if Path(p.cwd()).is_relative_to(real):
                return True
    return False


# -- restoring --------------------------------------------------------------------------------


def _restore_ref(root: Path, ref: str, before: str | None, after: str | None) -> bool:
    try:
        if before is None:
            git.git(root, "update-ref", "-d", ref, after or "")
        else:
            git.git(root, "update-ref", ref, before, *([after] if after else []))
    except CommandError:
        return False
    return True


def _restore_place(place: _Place, base: Snapshot, now: Snapshot, exclude: Sequence[str]) -> bool:
    root = place.path
    try:
        if (now.head_ref, now.head) != (base.head_ref, base.head):
            if base.head_ref is not None:
                git.git(root, "symbolic-ref", "HEAD", base.head_ref)
            elif base.head is not None:
                git.git(root, "update-ref", "--no-deref", "HEAD", base.head)
        if now.index != base.index and not _put_index(root, place.saved_index):
            return False
        _put_files(root, base.tree, _changed_paths(root, base.tree, now.tree))
        restored = _capture(root, place.scratch, exclude)
    except (SwarmError, OSError):
        return False
    return restored == base


def _put_index(root: Path, saved: Path) -> bool:
    """Write *saved* as *root*'s index, taking git's own ``index.lock`` while doing it."""
    real = _index_path(root)
    lock = real.with_name(real.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False  # a git command is running there; the next scan tries again
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(saved.read_bytes() if saved.is_file() else b"")
        if saved.is_file():
            lock.replace(real)
        else:
            lock.unlink()
            real.unlink(missing_ok=True)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


def _put_files(root: Path, tree: str, paths: Sequence[str]) -> None:
    """Make each of *paths* under *root* what it is in *tree* (absent paths are deleted).

    A file is replaced atomically (written aside, then renamed over), so a reader never
    finds it missing or half-written.
    """
    entries = _tree_entries(root, tree, paths)
    dirs: set[Path] = set()
    for rel in paths:
        target = root / rel
        entry = entries.get(rel)
        if entry is None or (target.is_dir() and not target.is_symlink()):
            _remove(target)
        if entry is None:
            dirs.add(target.parent)
        elif entry[0] != "160000":  # a submodule's commit is not ours to check out
            target.parent.mkdir(parents=True, exist_ok=True)
            _put_file(target, mode=entry[0], data=_blob(root, entry[1]))
    for directory in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        _prune_empty(directory, root)


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif os.path.lexists(target):
        target.unlink()


def _put_file(target: Path, *, mode: str, data: bytes) -> None:
    aside = target.with_name(f".{target.name}.swarm-restore")
    _remove(aside)
    if mode == "120000":
        aside.symlink_to(os.fsdecode(data))
    else:
        # A file rewritten in place keeps its permission bits; a new one gets the umask's.
        kept = None
        if target.is_file() and not target.is_symlink():
            kept = stat.S_IMODE(target.stat().st_mode)
        aside.write_bytes(data)
        bits = stat.S_IMODE(aside.stat().st_mode) if kept is None else kept
        bits = bits | (bits & 0o444) >> 2 if mode == "100755" else bits & ~0o111
        aside.chmod(bits)
    aside.replace(target)


def _tree_entries(root: Path, tree: str, paths: Sequence[str]) -> dict[str, tuple[str, str]]:
    if not paths:
        return {}
    out = git.git(root, "ls-tree", "-r", "-z", "--full-tree", tree, "--", *paths)
    entries = {}
    for record in out.split("\0"):
        if not record:
            continue
        meta, _, rel = record.partition("\t")
        mode, _kind, sha = meta.split(" ")
        entries[rel] = (mode, sha)
    return entries


def _blob(root: Path, sha: str) -> bytes:
    import subprocess  # noqa: PLC0415 - binary output, which proc.run (text) does not give

    return subprocess.run(
        ["git", "cat-file", "blob", sha],
        cwd=root,
        env=proc.clean_env(),
        capture_output=True,
        check=True,
    ).stdout


def _prune_empty(directory: Path, root: Path) -> None:
    while directory != root and directory.is_relative_to(root):
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent

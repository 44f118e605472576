"""Cleanup findings and how they are applied, shared by `swarm clean` and `swarm doctor`.

A plan is a list of :class:`Finding` objects, each naming its target, the reason and what
``--yes`` does about it. :func:`apply` carries a plan out under the repository lock in a safe
order (stop processes, remove stale git locks, checkpoint and remove worktrees, prune, delete
branches), re-checking each finding first, so a stale plan never destroys anything.

"Merged" means: the branch tip is an ancestor (``git merge-base --is-ancestor``) of the branch
the main checkout is on (its HEAD commit when detached) or of the run's base commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import itertools
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from worktree_swarm.core.errors import CommandError, GitError, SwarmError
from worktree_swarm.core.models import (
    DEFAULT_COMMIT_AUTHOR,
    DEFAULT_MAX_FILE,
    INTEGRATION_PREFIX,
    SCRATCH_PREFIX,
    ProcessIdentity,
    Task,
    is_valid_task_id,
)
from worktree_swarm.core.paths import real_path
from worktree_swarm.git import checkpoints, gitfiles, runner, worktrees
from worktree_swarm.git import index as git_index
from worktree_swarm.git import repo as git
from worktree_swarm.git import status as git_status
from worktree_swarm.git.worktrees import WorktreeInfo
from worktree_swarm.guard import channel
from worktree_swarm.infra import fs, lock, proc_scan, proctree
from worktree_swarm.infra.store import Store, TaskRow, task_from_json
from worktree_swarm.merge import target as merge_target
from worktree_swarm.run import control

AUTHOR = DEFAULT_COMMIT_AUTHOR
RESCUE_PREFIX = worktrees.RESCUE_PREFIX
_REMOVERS = max(2, min(8, os.cpu_count() or 1))  # worktrees removed at once
# Why a remote branch was left: its local branch was (it moved), so nothing is to retry later.
LOCAL_KEPT = "its local branch was kept; kept there too"


class Kind(enum.StrEnum):
    """What a finding is about."""

    PROCESS = "process"
    LOCK = "lock"
    REF = "ref"
    WORKTREE = "worktree"
    DIRECTORY = "directory"
    FOREIGN_WORKTREE = "foreign_worktree"
    BRANCH = "branch"
    REMOTE_BRANCH = "remote_branch"
    NODE_CLONE = "node_clone"


class Action(enum.StrEnum):
    """What ``--yes`` does about a finding; declaration order is the order they are applied."""

    STOP_TASK = "stop_task"
    KILL = "kill"
    UNLINK_LOCK = "unlink_lock"
    MEND_REF = "mend_ref"
    FORGET_REF_MOVES = "forget_ref_moves"
    REMOVE_WORKTREE = "remove_worktree"
    REMOVE_INITIALIZING = "remove_initializing"
    RESCUE_DIRECTORY = "rescue_directory"
    PRUNE = "prune"
    DELETE_BRANCH = "delete_branch"
    DELETE_REMOTE_BRANCH = "delete_remote_branch"
    REMOVE_NODE_CLONE = "remove_node_clone"
    KEEP = "keep"


_ORDER = {action: index for index, action in enumerate(Action)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing to clean: what, why, and what ``--yes`` does (``fix``).

    ``problem`` is False for informational entries (an unmerged task branch kept on purpose);
    those never make the exit code 1.
    """

    kind: Kind
    target: str
    reason: str
    action: Action
    fix: str
    problem: bool = True
    run_id: str | None = None
    task_id: str | None = None
    pid: int | None = None
    create_time: float | None = None
    pgid: int | None = None
    branch: str | None = None
    admin_dir: str | None = None
    merged_into: tuple[str, ...] = ()
    node: str | None = None  # a Ray node's name (executor `ray`)
    remote: str | None = None  # remote_branch: the URL of the remote it is on
    remote_tip: str | None = None  # remote_branch: the commit it is deleted at, and only at

    def to_json(self) -> dict[str, object]:
        """Plain dict for ``--json``."""
        data = asdict(self)
        data["merged_into"] = list(self.merged_into)
        if self.remote is not None:  # as git shows it: its user info can be a token
            data["remote"] = git.strip_userinfo(self.remote)
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What applying one finding did."""

    finding: Finding
    fixed: bool
    detail: str
    checkpoint: str | None = None


# -- shared git and process helpers -------------------------------------------------------


def merge_targets(repo: git.Repo, base_commit: str | None = None) -> list[str]:
    """What a branch may be merged into (a task merged into any of these counts as merged).

    The main checkout's branch (or HEAD), the run base, and `swarm merge`'s integration branches.
    """
    branch = git.current_branch(repo)
    targets = [f"refs/heads/{branch}" if branch else git.head_commit(repo)]
    integration = git.git(
        repo.root, "for-each-ref", "--format=%(refname)", "refs/heads/swarm/integration-*"
    )
    targets.extend(integration.split())
    return list(with_base(targets, base_commit))


def with_base(targets: Sequence[str], base_commit: str | None) -> tuple[str, ...]:
    """*targets* (of :func:`merge_targets` without a base) with a run's base second."""
    if not base_commit:
        return tuple(targets)
    return (*targets[:1], base_commit, *targets[1:])


def merged_into(repo: git.Repo, rev: str, targets: tuple[str, ...] | list[str]) -> str | None:
    """Return the first of *targets* that *rev* is an ancestor of, shortened, or None."""
    for target in targets:
        res = runner.run(repo.root, "merge-base", "--is-ancestor", rev, target, check=False)
        if res.returncode == 0:
            return _short(target)
    return None


def _short(target: str) -> str:
    return target.removeprefix("refs/heads/") if target.startswith("refs/") else target[:12]


class Merged:
    """:func:`merged_into` for many branch tips: one git process per target, not per branch."""

    def __init__(self, repo: git.Repo) -> None:
        self.repo = repo
        self._sets: dict[str, set[str]] = {}

    def into(self, tip: str, targets: tuple[str, ...] | list[str]) -> str | None:
        """The first of *targets* whose history has the branch tip *tip*, shortened, or None."""
        for target in targets:
            if target not in self._sets:
                self._sets[target] = git.merged_tips(self.repo, target)
            if tip in self._sets[target]:
                return _short(target)
        return None


def on_no_ref(repo: git.Repo, commit: str) -> bool:
    """Whether *commit* is reachable from no branch, tag, remote branch or rescue ref.

    Not remote branches while a run goes on: an agent may have set one to any commit, and
    the run's guard puts them back (deletes a new one) when the run ends.
    """
    remotes = () if lock.manager_alive(repo.state_dir) else ("--remotes",)
    out = git.git(
        repo.root, "rev-list", "-n1", commit, "--not",
        "--branches", "--tags", *remotes, "--glob=refs/swarm/*",
    )  # fmt: skip
    return bool(out.strip())


@functools.cache
def protected_pids() -> frozenset[int]:
    """PIDs never signalled: this process and its ancestors (the user's shell)."""
    me = psutil.Process()
    return frozenset({me.pid, *(p.pid for p in me.parents())})


# How long a git left working in a worktree by a swarm command that was killed may take to end.
_ORPHAN_GIT_SECONDS = 10.0


def processes_using(path: Path, cwds: Mapping[int, str] | None = None) -> list[psutil.Process]:
    """Processes whose cwd is inside *path*, other than this one and its ancestors.

    *cwds*: a snapshot of every process's (:func:`proc_scan.working_directories`) to look in.
    A git whose parent is gone (a checkpoint's `git add` or `commit` of a `swarm clean` that
    was killed) is waited for, for a few seconds: it ends by itself, and is no user's.
    """
    keep = protected_pids()
    found = [p for p in proc_scan.processes_in(path, cwds=cwds) if p.pid not in keep]
    orphans = [p for p in found if _orphaned_git(p)]
    if orphans:
        gone, _alive = psutil.wait_procs(orphans, timeout=_ORPHAN_GIT_SECONDS)
        found = [p for p in found if p not in gone]
    return found


def _orphaned_git(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name() == "git" and process.ppid() == 1
    return False


def describe(process: psutil.Process) -> str:
    """``name (pid N)``."""
    try:
        name = process.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        name = "?"
    return f"{name} (pid {process.pid})"


def kill_finding(process: psutil.Process, *, reason: str, fix: str) -> Finding | None:
    """A KILL finding for *process* with its identity (None when it is already gone)."""
    identity = proctree.found_identity(process)
    if identity is None:
        return None
    return Finding(
        kind=Kind.PROCESS,
        target=f"pid {identity.pid}",
        reason=reason,
        action=Action.KILL,
        fix=fix,
        pid=identity.pid,
        create_time=identity.create_time,
        pgid=identity.pgid,
    )


def locked_missing(
    repo: git.Repo, info: WorktreeInfo, *, force: bool, why: str = "", task: TaskRow | None = None
) -> Finding:
    """A worktree whose directory is missing but locked (its drive may be unmounted).

    Kept, as git keeps it; with *force*, unlocked and pruned. *why* starts the reason.
    """
    path = Path(info.path)
    locked = info.locked or "no reason given"
    return Finding(
        kind=Kind.WORKTREE,
        target=str(path),
        reason=f"{why}its directory is missing, and it is locked ({locked})",
        action=Action.PRUNE if force else Action.KEEP,
        fix="unlock it, prune it"
        if force
        else f"kept: its drive may be unmounted; `git worktree unlock {path}` or use --force",
        branch=info.branch,
        run_id=task.run_id if task is not None else None,
        task_id=task.task_id if task is not None else None,
        admin_dir=worktrees.admin_of(repo, path),
    )


def sealed_worktree(path: Path, *, why: str = "", task: TaskRow | None = None) -> Finding:
    """A worktree whose directory cannot be read (a ``chmod 0``): kept, whatever git says.

    git takes it for gone (prunable); its files are there, and may be work. *why* starts the
    reason.
    """
    return Finding(
        kind=Kind.WORKTREE,
        target=str(path),
        reason=f"{why}its directory cannot be read",
        action=Action.KEEP,
        fix=f"kept: `chmod u+rwx {path}` gives it back to you; then clean again",
        run_id=task.run_id if task is not None else None,
        task_id=task.task_id if task is not None else None,
    )


# Why a worktree whose submodule's commit exists nowhere else is kept.
_ONLY_HERE = (
    "has a commit in no repository but this worktree's (the branch records only its id); "
    "push it to the submodule's remote first"
)


def worktree_finding(
    repo: git.Repo,
    info: WorktreeInfo,
    *,
    kind: Kind,
    reason: str,
    force: bool,
    run_id: str | None = None,
    task_id: str | None = None,
    look: bool = True,
    cwds: Mapping[int, str] | None = None,
    known: bool | None = None,
) -> tuple[Finding, bool | None]:
    """Plan removing the registered worktree *info*; returns (finding, dirty).

    Uncommitted work is checkpointed on its branch first. A locked worktree, one still used by
    processes, or one whose HEAD commit is on no other ref is kept (and named) unless *force*.
    Without *look* its status is not taken (dirty is None): for a plan carried out at once,
    whose removal asks git again right before it deletes anything. *cwds*: as for
    :func:`processes_using`. *known*: what :func:`worktree_dirty` said, taken beforehand.
    """
    path = info.path
    unseen = ""
    try:
        dirty = known if known is not None else worktree_dirty(path) if look else None
    except (GitError, CommandError) as exc:  # a corrupt index, a pipe planted where git reads
        dirty, unseen = None, str(exc)
    users = processes_using(path, cwds)
    keep = ""
    if unseen:  # its work cannot be committed first, --force or not
        keep = f"git cannot look into it ({unseen})"
    elif info.locked is not None and not force:
        keep = f"it is locked ({info.locked or 'no reason given'}); `git worktree unlock {path}`"
    elif users and not force:
        keep = f"{describe(users[0])} is using it; stop it first"
    elif not force and info.head and _kept_commit(repo, info):
        keep = f"its commit {info.head[:12]} is on no branch; `git branch NAME {info.head[:12]}`"
    elif not force:
        keep = _submodule_keep(repo, path)
    if unseen:
        action, fix = Action.KEEP, f"kept: {keep}"
    elif keep:
        action, fix = Action.KEEP, f"kept: {keep}, or use --force"
    elif dirty:
        on = f" on {info.branch}" if info.branch else ""
        action, fix = Action.REMOVE_WORKTREE, f"commit its uncommitted changes{on}, then remove it"
    else:
        action, fix = Action.REMOVE_WORKTREE, "remove it"
    finding = Finding(
        kind=kind, target=str(path), reason=reason, action=action, fix=fix,
        branch=info.branch, run_id=run_id, task_id=task_id,
    )  # fmt: skip
    return finding, dirty


def remote_branch_finding(
    *,
    branch: str,
    remote: str,
    url: str,
    tip: str,
    reason: str,
    run_id: str,
    task_id: str,
    pull_request: int | None = None,
) -> Finding:
    """Plan deleting *branch* on *remote* (*url*), which a Ray run pushed, if still at *tip*.

    *tip* is the last commit the run pushed there or fetched from there: a branch someone
    moved since is left. Only planned with the deletion of its local branch (or after one).
    One an open *pull_request* (`swarm pr`) may come from is kept: deleting it closes it.
    """
    finding = Finding(
        kind=Kind.REMOTE_BRANCH,
        target=f"{branch} on {git.strip_userinfo(remote)}",
        reason=reason,
        action=Action.DELETE_REMOTE_BRANCH,
        fix=f"delete it there if it is still at {tip[:12]}",
        branch=branch,
        run_id=run_id,
        task_id=task_id,
        remote=url,
        remote_tip=tip,
    )
    if pull_request is None:
        return finding
    return dataclasses.replace(
        finding,
        reason=f"{reason}; pull request #{pull_request} was opened from it",
        action=Action.KEEP,
        fix="kept: deleting it would close the pull request; delete it there once closed",
        problem=False,
    )


def open_pull_request(row: TaskRow) -> int | None:
    """The number of the pull request `swarm pr` opened for *row*'s branch, unless closed."""
    if row.pr_number is None or (row.pr_state or "open") != "open":
        return None
    return row.pr_number


def worktree_dirty(path: Path) -> bool:
    """Whether the worktree *path* holds work that removing it would need to commit first."""
    # A directory git cannot read may hide work, and so may an index flag.
    return git_status.full_status(path) != "" or git_index.hides_edits(path)


# -- applying a plan ------------------------------------------------------------------------


def apply(
    repo: git.Repo,
    findings: list[Finding],
    *,
    store: Store | None,
    force: bool,
    grace: float = 5.0,
) -> list[Result]:
    """Carry out *findings* in the safe order, under the repository lock; never raises for one.

    Each finding is re-checked before it is acted on; one that no longer holds, or fails, is
    reported as not fixed with the reason, and the others go on.
    """
    # A running guard is told exactly which branches this moves, so it blames no agent. Its
    # verdict is awaited without the repository lock: the guard may need that lock first (to
    # put back a task worktree an agent removed), and would give it after the wait gave up.
    with channel.moving_refs(repo, []) as moves, git.repo_lock(repo):

        def one(finding: Finding) -> Result:
            if finding.action is Action.KEEP:
                return Result(finding=finding, fixed=False, detail=finding.fix)
            try:
                detail, sha = _apply_one(
                    repo, finding, store=store, force=force, grace=grace, moves=moves
                )
            except (SwarmError, OSError) as exc:
                return Result(finding=finding, fixed=False, detail=str(exc))
            return Result(finding=finding, fixed=True, detail=detail, checkpoint=sha)

        results: list[Result] = []
        ordered = sorted(findings, key=lambda f: _ORDER[f.action])
        for action, group in itertools.groupby(ordered, key=lambda f: f.action):
            batch = list(group)
            if action is Action.REMOVE_WORKTREE and len(batch) > 1:
                # Each worktree's files are its own: deleting them is the slow part on a big
                # checkout, and the disk is kept busier by several at once.
                with ThreadPoolExecutor(min(len(batch), _REMOVERS)) as pool:
                    results.extend(pool.map(one, batch))
            elif action is Action.DELETE_BRANCH:
                results.extend(_delete_branches(repo, batch, moves=moves))
            elif action is Action.DELETE_REMOTE_BRANCH:
                kept = {
                    r.finding.branch or r.finding.target
                    for r in results
                    if r.finding.action is Action.DELETE_BRANCH and not r.fixed
                }
                results.extend(_delete_remote_branches(repo, batch, kept=kept))
            else:
                results.extend(map(one, batch))
    return results


def _apply_one(
    repo: git.Repo,
    f: Finding,
    *,
    store: Store | None,
    force: bool,
    grace: float,
    moves: channel.RefMoves,
) -> tuple[str, str | None]:
    if f.action is Action.STOP_TASK:
        return _stop_task(repo, f, store=store, grace=grace), None
    if f.action is Action.KILL:
        return _kill(f, grace=grace), None
    if (simple := _by_repo().get(f.action)) is not None:
        return simple(repo, f), None
    if f.action is Action.FORGET_REF_MOVES:
        return ("removed" if channel.forget_abandoned(Path(f.target)) else "in use again"), None
    if f.action is Action.REMOVE_WORKTREE:
        return _remove_worktree(repo, f, force=force, moves=moves, store=store)
    if f.action is Action.RESCUE_DIRECTORY:
        return _rescue_directory(repo, f)
    if f.action is Action.REMOVE_NODE_CLONE:
        return _remove_node_clone(f, store=store), None
    raise ValueError(f"{f.action} is applied by its batch")  # the branches: _delete_*branches


def _by_repo() -> dict[Action, Callable[[git.Repo, Finding], str]]:
    """The fixes that need the repository and the finding alone."""
    return {
        Action.UNLINK_LOCK: _unlink_lock,
        Action.MEND_REF: _mend_ref,
        Action.REMOVE_INITIALIZING: _remove_initializing,
        Action.PRUNE: _prune,
    }


def _remove_node_clone(f: Finding, *, store: Store | None) -> str:
    from worktree_swarm.run import ray_leftovers  # noqa: PLC0415 - only with Ray runs

    run = store.get_run(f.run_id) if store is not None and f.run_id is not None else None
    if run is None or f.task_id is None or f.node is None:
        raise SwarmError(f"{f.target}: no run recorded for it")
    path = f.target.split(":", 1)[1]
    leftover = ray_leftovers.Leftover(
        node=f.node, run_id=run.run_id, task_id=f.task_id, path=path, size=0
    )
    return ray_leftovers.remove(leftover, address=run.settings.ray_address)


def _stop_task(repo: git.Repo, f: Finding, *, store: Store | None, grace: float) -> str:
    if store is None or f.run_id is None or f.task_id is None:
        raise SwarmError(f"{f.target}: no run recorded for it")
    if lock.manager_alive(repo.state_dir):
        raise SwarmError(f"a manager now holds the repository and owns task {f.task_id}")
    run = store.get_run(f.run_id)
    if run is not None:
        # The run's own kill_grace: its agents may need longer (or less) to checkpoint.
        grace = run.settings.kill_grace
    control.stop(repo, store, f.run_id, [f.task_id], grace=grace)
    return f"stopped task {f.task_id} (process tree killed, work checkpointed)"


def _kill(f: Finding, *, grace: float) -> str:
    if f.pid is None or f.create_time is None or f.pgid is None:
        raise SwarmError(f"{f.target}: no process identity recorded")
    identity = ProcessIdentity(pid=f.pid, create_time=f.create_time, pgid=f.pgid)
    if f.pid in protected_pids():
        raise SwarmError(f"pid {f.pid} is this process or its parent; not killed")
    if not proctree.is_alive(identity):
        return "already gone"
    # kill_tree re-checks the create time, so a reused PID is never signalled.
    proctree.kill_tree(identity, grace=grace)
    return "killed (whole process tree)"


def git_users(paths: list[Path]) -> list[psutil.Process]:
    """Live git processes whose cwd is inside one of *paths* (they may hold git's locks)."""
    roots = [real_path(p) for p in paths]
    found = []
    for process in psutil.process_iter(["name"]):
        name = process.info.get("name") or ""
        if not name.startswith("git"):
            continue
        try:
            cwd = Path(process.cwd())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(cwd.is_relative_to(root) for root in roots):
            found.append(process)
    return found


def repo_paths(repo: git.Repo) -> list[Path]:
    """The main checkout, the git common dir and every registered worktree of *repo*."""
    paths = [repo.root, repo.common_dir]
    admin = repo.common_dir / "worktrees"
    if admin.is_dir():
        for entry in admin.iterdir():
            with contextlib.suppress(OSError):
                paths.append(Path(os.fsdecode(fs.read_file(entry / "gitdir")).strip()).parent)
    return paths


def _unlock_index(repo: git.Repo, path: Path) -> None:
    """Delete the index lock a killed git left in the worktree *path*, if no git runs here.

    A `swarm clean` killed in its checkpoint's commit leaves one: the next clean would fail.
    """
    lock = git.git_dir(path) / "index.lock"
    if lock.exists() and not git_users(repo_paths(repo)):
        lock.unlink(missing_ok=True)


def _unlink_lock(repo: git.Repo, f: Finding) -> str:
    path = Path(f.target)
    if not path.exists():
        return "already gone"
    users = git_users(repo_paths(repo))
    if users:
        raise SwarmError(f"{describe(users[0])} is working in this repository; try again later")
    path.unlink()
    return "removed"


def _mend_ref(repo: git.Repo, f: Finding) -> str:
    """Write a broken ref again where its reflog last left it, or remove its file of garbage."""
    name = f.target
    path = repo.common_dir / name
    if _last_logged(repo, name) is None and not gitfiles.broken_ref_file(path):
        return "no longer broken"
    users = git_users(repo_paths(repo))
    if users:
        raise SwarmError(f"{describe(users[0])} is working in this repository; try again later")
    was = _last_logged(repo, name)
    path.unlink(missing_ok=True)
    if was is None:
        return "removed (its file held no commit)"
    git.git(repo.root, "update-ref", "-m", "swarm doctor: mended", name, was)
    return f"put back at {was[:12]}, as its reflog last left it"


def _last_logged(repo: git.Repo, name: str) -> str | None:
    """The commit *name*'s reflog last moved it to, when that commit is there."""
    try:
        lines = (repo.common_dir / "logs" / name).read_bytes().splitlines()
    except OSError:
        return None
    last = lines[-1].split(b" ") if lines else []
    sha = last[1].decode("ascii", "replace") if len(last) > 1 else ""
    if not gitfiles.is_object_name(sha) or set(sha) == {"0"}:
        return None
    res = runner.run(repo.root, "cat-file", "-e", f"{sha}^{{commit}}", check=False)
    return sha if res.returncode == 0 else None


def broken_refs(repo: git.Repo) -> list[Finding]:
    """Loose refs git cannot read (`warning: ignoring broken ref`): garbage an agent wrote.

    Git skips them when it lists refs, and fails on them when it is asked for one (your branch
    "No commits yet", `git log --all` a fatal error). Each is written again where its reflog
    last left it, or its file removed.
    """
    said = runner.run(repo.root, "for-each-ref", "--format=", check=False).stderr
    names = re.findall(r"^warning: ignoring broken ref (refs/\S+)$", said, re.MULTILINE)
    found = []
    for name in names:
        if not gitfiles.broken_ref_file(repo.common_dir / name):
            continue  # not a loose file of garbage (a dangling symbolic ref): git's to tell
        was = _last_logged(repo, name)
        fix = f"write it again at {was[:12]} (its reflog's last)" if was else "delete its file"
        found.append(
            Finding(
                kind=Kind.REF,
                target=name,
                reason="ref file holding no commit (garbage written into it): git skips it",
                action=Action.MEND_REF,
                fix=fix,
            )
        )
    return found


def _local_paths(store: Store | None, f: Finding, path: Path) -> tuple[str, ...]:
    """The task's ``link`` and ``copy`` paths, when the store still knows the task."""
    known = _task_of(store, f)
    if known is None:
        return ()
    row, task = known
    return worktrees.local_paths(path, link=task.link, copy=task.copy, base=row.base_commit)


def _as_copied(repo: git.Repo, store: Store | None, f: Finding, path: Path) -> frozenset[str]:
    """The task's ``link`` symlinks, and its ``copy`` files still as copied (yours unchanged).

    Removing the worktree loses nothing of those: a file an agent made under a ``copy``
    pattern, or a copy it changed, is work (no checkpoint commits it) and keeps the worktree.
    """
    known = _task_of(store, f)
    if known is None:
        return frozenset()
    row, task = known
    copied = worktrees.copied_paths(path, task.copy, base=row.base_commit or "HEAD")
    same = (
        rel for rel in copied if fs.same_file(_copied_from(repo.root / rel, path / rel), path / rel)
    )
    return frozenset([*task.link, *same])


def _copied_from(src: Path, copy: Path) -> Path:
    """What *copy* was made from: *src*, or the file the symlink *src* names (copied as that)."""
    return real_path(src) if src.is_symlink() and not copy.is_symlink() else src


def _task_of(store: Store | None, f: Finding) -> tuple[TaskRow, Task] | None:
    """The store's row of the finding's task, with the task it ran; None when not known."""
    if store is None or not f.run_id or not f.task_id:
        return None
    row = store.task(f.run_id, f.task_id)
    return None if row is None else (row, task_from_json(row.spec_json))


def _max_file(store: Store | None, f: Finding) -> int:
    """The cap on one committed file of the run that made the worktree (git's default else)."""
    run = None if store is None or not f.run_id else store.get_run(f.run_id)
    return run.settings.max_file if run is not None else DEFAULT_MAX_FILE


def _registered_locked(repo: git.Repo) -> dict[Path, WorktreeInfo]:
    # We already hold the repository lock, and list_worktrees would wait for it forever.
    infos = worktrees.list_worktrees_locked(repo)
    return {real_path(w.path): w for w in infos}


def _remove_worktree(
    repo: git.Repo, f: Finding, *, force: bool, moves: channel.RefMoves, store: Store | None = None
) -> tuple[str, str | None]:
    path = Path(f.target)
    info = worktrees.registration_locked(repo, path)
    if info is None:
        return "already gone", None
    if info.is_main:
        raise SwarmError(f"{path} is the main checkout; never removed")
    sha = saved = None
    repaired = False
    clean = True
    if path.is_dir():
        _refuse_when_not_ours_to_remove(repo, path, force=force)
        worktrees.unplant(repo, path, info.branch)  # nothing of git's below writes through one
        _unlock_index(repo, path)
        # A checkout killed half-way is populated from HEAD, never committed as deletions.
        repaired = gitfiles.repair_checkout(path)
        # One `status` settles the usual case (a finished task's checkout holds nothing new):
        # no checkpoint, and the files go without `git worktree remove`, which runs its own.
        # Nothing of a killed `swarm merge --into` (what its checks wrote) is committed.
        as_copied = functools.partial(_as_copied, repo, store, f, path)
        clean = _scratch(info) or _nothing_to_keep(path, as_copied)
        if not clean:
            clean, saved = _save_merge_left(repo, path, info.branch or "")
        if not clean:
            ref = f"refs/heads/{info.branch}" if info.branch else None
            tip = None if ref is None else moves.announce(ref, at=info.head)
            sha = checkpoints.checkpoint(
                path,
                message=f"swarm: checkpoint {path.name} (clean)",
                author=AUTHOR,
                exclude=_local_paths(store, f, path),
                max_file=_max_file(store, f),
            )
            if ref is not None:
                moves.moved(ref, sha or tip)
            # Committed, it goes like a clean one: the index first (git's own removal deletes
            # the files first, and one killed in between left deletions to commit next time).
            clean = _nothing_to_keep(path, as_copied)
        # On a branch, its commit is that branch's; detached, it may be on none.
        head = None if info.branch is not None else git.rev_parse_in(path, "HEAD")
        fresh = dataclasses.replace(info, head=head)
        if not force and head and _kept_commit(repo, fresh):
            raise SwarmError(f"its commit {head[:12]} is on no branch; kept (or use --force)")
    _remove_announced(repo, path, moves=moves, force=force, clean=clean)
    note = "checkout was incomplete (repaired, nothing deleted), " if repaired else ""
    note += saved or ""
    if sha:
        return f"{note}checkpointed {sha[:12]} on {info.branch or 'HEAD'}, removed", sha
    return f"{note}removed", None


def _save_merge_left(repo: git.Repo, path: Path, branch: str) -> tuple[bool, str | None]:
    """Whether *path* is `swarm merge`'s worktree holding nothing to commit onto *branch*.

    And what it held, saved aside, as a note. So are a merge cut off there (its checks'
    files, a half-made merge) and one whose branch is gone: deleted by a run's guard that
    undid an agent's `swarm merge`, every file of that merge left staged, which a checkpoint
    would make anew.
    """
    if not branch.startswith(INTEGRATION_PREFIX):
        return False, None
    if merge_target.half_merged(path) or merge_target.checks_cut_off(path):
        what = "what a cut-off `swarm merge` left there"
    elif not git.branch_exists(repo, branch):
        what = "what it held, its branch gone,"
    else:
        return False, None
    saved = merge_target.save_left(repo, path, branch)
    return True, f"{what} saved as {saved}, " if saved else None


def _remove_announced(
    repo: git.Repo, path: Path, *, moves: channel.RefMoves, force: bool, clean: bool
) -> None:
    """Remove the worktree *path*, named to a running guard like a ref: swarm's own removal."""
    admin = worktrees.own_admin(repo, path)
    key = channel.worktree_key(path)
    if admin is not None:
        moves.announce(key, at=admin.name)
    if not ((clean or force) and worktrees.delete_locked(repo, path)):
        # Its submodules were looked at before (work in one is kept): nothing of theirs to lose.
        submodules = clean and admin is not None and (admin / "modules").exists()
        worktrees.git_remove_locked(repo, path, force=force, submodules=submodules)
    if admin is not None:
        moves.moved(key, None)


def _kept_commit(repo: git.Repo, info: WorktreeInfo) -> bool:
    """Whether the detached worktree *info* holds a commit on no ref, to be kept for you.

    Not in the temporary worktree of a killed `swarm merge --into`: its merges were for a
    branch that never moved, and the next merge makes them again.
    """
    if info.branch is not None or not info.head or _scratch(info):
        return False
    return on_no_ref(repo, info.head)


def _scratch(info: WorktreeInfo) -> bool:
    """Whether *info* is the temporary worktree of a killed `swarm merge --into`."""
    return info.branch is None and info.path.name.startswith(SCRATCH_PREFIX)


def _refuse_when_not_ours_to_remove(repo: git.Repo, path: Path, *, force: bool) -> None:
    """Raise when a process uses *path*, or (without *force*) a submodule there holds work.

    No checkpoint can commit work inside a submodule: removing the worktree would lose it.
    """
    changed = worktrees.tampered(repo, path)
    if changed is not None:
        raise SwarmError(f"{changed}; kept (swarm runs no git there)")
    users = processes_using(path)
    if users:
        raise SwarmError(f"{describe(users[0])} is using {path}; stop it first")
    keep = "" if force else _submodule_keep(repo, path)
    if keep:
        raise SwarmError(f"{keep}; kept")


def _submodule_keep(repo: git.Repo, path: Path) -> str:
    """Why the worktree *path* is kept for its submodules' sake ("" when it is not)."""
    left = git_status.submodule_work(path)
    if left:
        return f"submodule {', '.join(left)} holds work no commit records; save it first"
    only = git_status.submodule_commits_only_here(repo, path)
    if only:
        return f"submodule {', '.join(only)} {_ONLY_HERE}"
    return ""


def _nothing_to_keep(path: Path, as_copied: Callable[[], Collection[str]] = frozenset) -> bool:
    """Whether git's status of the worktree *path* is empty, every directory of it seen.

    Untracked paths *as_copied* names (:func:`_as_copied`, asked only when nothing else is
    listed) do not count. A directory git cannot read (an agent's ``chmod``) is opened to its
    owner first: swarm removes the worktree anyway, and its files must be seen to be kept.
    """
    status = git_status.full_status(path)
    if status is None:
        fs.make_removable(path)
        status = git_status.full_status(path)
    if status is None:
        return False
    # Each untracked file by its name (`--untracked-files=all`): "?? name".
    entries = [entry for entry in status.split("\0") if entry]
    if not all(entry.startswith("?? ") for entry in entries):
        return False
    if entries and not {entry[3:] for entry in entries} <= set(as_copied()):
        return False
    return not git_index.hides_edits(path)


def adding_process(path: Path) -> psutil.Process | None:
    """A live process that is creating the worktree *path* (``git worktree add``), if any."""
    users = processes_using(path)
    if users:
        return users[0]
    target = real_path(path)
    for process in psutil.process_iter(["name", "cmdline", "cwd"]):
        if not (process.info.get("name") or "").startswith("git"):
            continue
        cwd = process.info.get("cwd") or "/"
        for arg in process.info.get("cmdline") or []:
            if arg and not arg.startswith("-") and real_path(Path(cwd) / arg) == target:
                return process
    return None


def _remove_initializing(repo: git.Repo, f: Finding) -> str:
    path = Path(f.target)
    info = _registered_locked(repo).get(real_path(path))
    if info is None:
        return "already gone"
    if info.is_main or info.locked != "initializing" or f.admin_dir is None:
        raise SwarmError(f"{path} is no longer locked `initializing`; left alone")
    adder = adding_process(path)
    if adder is not None:
        raise SwarmError(f"{describe(adder)} is still creating it")
    if real_path(repo.root).is_relative_to(real_path(path)):
        raise SwarmError(f"{path} contains the main checkout; never removed")
    # The directory only holds git's partial checkout: `worktree add` never finished.
    (Path(f.admin_dir) / "locked").unlink(missing_ok=True)
    if path.is_dir() and not path.is_symlink():
        fs.remove_tree(path)
    worktrees.prune_gone(repo)
    return "unlocked, half-made checkout deleted, pruned"


def _rescue_directory(repo: git.Repo, f: Finding) -> tuple[str, str | None]:
    path = Path(f.target)
    if not path.is_dir() or path.is_symlink():
        return "already gone", None
    if real_path(path) in _registered_locked(repo):
        raise SwarmError(f"{path} is now a registered worktree; left alone")
    real, root = real_path(path), real_path(repo.root)
    if root.is_relative_to(real) or real.is_relative_to(root):
        raise SwarmError(f"{path} is inside the main checkout; never removed")
    sha = worktrees.snapshot_files(repo, path, message=f"swarm: files of stray directory {path}")
    if sha is None:
        fs.remove_tree(path)
        return "removed (it held no files)", None
    ref = _rescue_ref(repo, path.name, sha)
    git.git(repo.root, "update-ref", ref, sha)
    fs.remove_tree(path)
    return f"files saved as {ref} ({sha[:12]}), removed", sha


def _rescue_ref(repo: git.Repo, name: str, sha: str) -> str:
    # The directory name is not trusted to be a valid ref component.
    stem = name.lower() if is_valid_task_id(name.lower()) else "dir"
    ref = RESCUE_PREFIX + stem
    if git.rev_parse(repo, ref) is not None:
        ref = f"{ref}-{sha[:12]}"
    return ref


def _prune(repo: git.Repo, f: Finding) -> str:
    path = Path(f.target)
    if real_path(path) not in _registered_locked(repo):
        return "already gone"
    if path.is_dir() and not path.is_symlink():
        with contextlib.suppress(OSError):
            path.rmdir()  # empty: a worktree's removal cut short after its `.git` file
    if os.path.lexists(path / ".git"):
        raise SwarmError(f"{path} is a checkout again; not pruned")
    if f.admin_dir is not None:
        # Planned only with --force: the user's lock on a vanished worktree is overridden.
        (Path(f.admin_dir) / "locked").unlink(missing_ok=True)
    worktrees.prune_gone(repo)
    if real_path(path) in _registered_locked(repo):
        raise SwarmError(f"git did not prune {path}; see `git worktree list --porcelain`")
    if path.exists():
        return "pruned; its directory still holds files: `swarm doctor --yes` saves and removes it"
    return "pruned"


def _delete_branches(
    repo: git.Repo, batch: list[Finding], *, moves: channel.RefMoves
) -> list[Result]:
    """Delete the branches of *batch* with a few git processes, whatever their number.

    Each is checked (still there, checked out in no worktree, still merged where the plan
    said) against one read of every branch, worktree and merge target; those that pass go in
    one `update-ref` transaction, deleting each only at the tip just checked. If it fails (a
    branch moved, a stale lock), nothing was deleted: each is deleted alone at that tip.
    """
    tips = git.branch_tips(repo)
    checked_out = {w.branch: w.path for w in worktrees.list_worktrees_locked(repo) if w.branch}
    merged = Merged(repo)
    done: dict[int, Result] = {}
    going: dict[int, tuple[str, str]] = {}  # position in *batch*: (ref, tip)
    for index, f in enumerate(batch):
        branch = f.branch or f.target
        tip = tips.get(branch)
        if tip is None:
            done[index] = Result(finding=f, fixed=True, detail="already gone")
        elif branch in checked_out:
            why = f"{branch} is checked out in {checked_out[branch]}; kept"
            done[index] = Result(finding=f, fixed=False, detail=why)
        elif f.merged_into and merged.into(tip, f.merged_into) is None:
            why = f"{branch} is no longer merged (it has new commits); kept"
            done[index] = Result(finding=f, fixed=False, detail=why)
        else:
            going[index] = (f"refs/heads/{branch}", tip)
    if going:
        moves.announce_all(dict(going.values()))
        lines = "".join(f"delete {ref} {tip}\n" for ref, tip in going.values())
        res = runner.run(repo.root, "update-ref", "--stdin", input_text=lines, check=False)
        for index, (ref, tip) in going.items():
            together = res.returncode == 0
            done[index] = _deleted(repo, batch[index], ref, tip, together=together, moves=moves)
    return [done[index] for index in range(len(batch))]


def _deleted(
    repo: git.Repo, f: Finding, ref: str, tip: str, *, together: bool, moves: channel.RefMoves
) -> Result:
    """The result for *ref*, deleted *together* with others, or else now alone at *tip*."""
    if not together:
        now = git.rev_parse(repo, ref)
        if now is None:
            return Result(finding=f, fixed=True, detail="already gone")
        if now != tip:
            why = f"{ref.removeprefix('refs/heads/')} moved while it was being deleted; kept"
            return Result(finding=f, fixed=False, detail=why)
        try:  # with the old value: a branch that moved since the check is never deleted
            git.git(repo.root, "update-ref", "-d", ref, tip)
        except SwarmError as exc:
            return Result(finding=f, fixed=False, detail=str(exc))
    moves.moved(ref, None)
    return Result(finding=f, fixed=True, detail=f"deleted (was {tip[:12]})")


def _delete_remote_branches(
    repo: git.Repo, batch: list[Finding], *, kept: set[str]
) -> list[Result]:
    """Delete the remote branches of *batch*, each only at the commit its finding names.

    One whose local branch this plan *kept* (it moved) is kept too. Per remote: one
    ``ls-remote`` (a remote that cannot be reached is one line for each of its branches, and
    everything else of the plan is done), then one push deleting those still where they were
    left, each under its lease, so one moved since (by anyone) is never deleted.
    """
    done: dict[int, Result] = {}
    by_remote: dict[str, dict[int, Finding]] = {}
    for index, f in enumerate(batch):
        branch = f.branch or f.target
        if f.remote is None or f.remote_tip is None:
            done[index] = Result(finding=f, fixed=False, detail="no remote recorded for it")
        elif branch in kept:
            done[index] = Result(finding=f, fixed=False, detail=LOCAL_KEPT)
        else:
            by_remote.setdefault(f.remote, {})[index] = f
    for url, found in by_remote.items():
        done.update(_delete_on(repo, url, found))
    return [done[index] for index in range(len(batch))]


def _delete_on(repo: git.Repo, url: str, found: dict[int, Finding]) -> dict[int, Result]:
    """:func:`_delete_remote_branches` for the findings of one remote, *url*."""
    branches = [f.branch or f.target for f in found.values()]
    try:
        tips = git.remote_tips(repo, url, branches)
    except SwarmError as exc:
        output = exc.output if isinstance(exc, CommandError) else str(exc)
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        first = next(
            (line for line in lines if line.startswith("fatal:")), lines[0] if lines else ""
        )
        why = (
            f"cannot reach {git.strip_userinfo(url)} ({git.strip_userinfo(first)}); kept there: "
            "run `swarm clean --yes` again later"
        )
        return {index: Result(finding=f, fixed=False, detail=why) for index, f in found.items()}
    done: dict[int, Result] = {}
    leases: dict[str, str] = {}
    for index, f in found.items():
        branch, tip = f.branch or f.target, f.remote_tip or ""
        now = tips.get(branch)
        if now is None:
            done[index] = Result(finding=f, fixed=True, detail="already gone")
        elif now != tip:
            why = f"there it is at {now[:12]}, not at {tip[:12]}: moved since; kept"
            done[index] = Result(finding=f, fixed=False, detail=why)
        else:
            leases[branch] = tip
    outcome = git.delete_remote_branches(repo, url, leases) if leases else {}
    for index, f in found.items():
        branch = f.branch or f.target
        if branch in outcome:
            why = outcome[branch]
            detail = f"deleted (was {leases[branch][:12]})" if not why else f"{why}; kept"
            done[index] = Result(finding=f, fixed=not why, detail=detail)
    return done


def ref_move_notes(repo: git.Repo) -> list[Finding]:
    """What a killed `swarm merge`/`clean` left in ``.git/swarm/ref-moves`` (docs/guard.md)."""
    return [
        Finding(
            kind=Kind.LOCK,
            target=str(path),
            reason="swarm's note of the refs a killed swarm merge, clean or pr was moving"
            " (its process is gone)",
            action=Action.FORGET_REF_MOVES,
            fix="delete it",
        )
        for path in channel.abandoned(repo.state_dir)
    ]


def stale_git_locks(repo: git.Repo) -> list[Finding]:
    """Git's lock files in *repo* while no git process works there: a killed git's, or planted.

    Left, your next `git commit` (``index.lock``) or a branch's move (``refs/heads/x.lock``)
    fails as if another git were at work.
    """
    common = repo.common_dir
    candidates = [
        *common.glob("*.lock"),
        *common.glob("worktrees/*/*.lock"),
        *(common / "refs").rglob("*.lock"),
    ]
    # swarm's own locks (<common>/swarm/*.lock) are flock()s: free when their holder dies.
    if not candidates or git_users(repo_paths(repo)):
        return []
    return [
        Finding(
            kind=Kind.LOCK,
            target=str(path),
            reason="git lock file whose writer is gone (no git process works in this repository)",
            action=Action.UNLINK_LOCK,
            fix="delete it",
        )
        for path in sorted(candidates)
    ]

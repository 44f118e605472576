"""Branches for `swarm clean` and `swarm doctor`: which are merged, and deleting them safely.

"Merged" means: the branch tip is an ancestor (``git merge-base --is-ancestor``) of the branch
the main checkout is on (its HEAD commit when detached) or of the run's base commit.

Local branches are deleted in one ``update-ref`` transaction, each only at the tip just
checked; the remote branches a Ray run pushed, each only at the commit its finding names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from worktree_swarm.cleanup.findings import Action, Finding, Kind, Result
from worktree_swarm.core.errors import CommandError, SwarmError
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import remotes as git_remotes
from worktree_swarm.git import repo as git
from worktree_swarm.git import runner, worktrees
from worktree_swarm.git.remotes import strip_userinfo
from worktree_swarm.guard import ref_moves
from worktree_swarm.infra import lock
from worktree_swarm.infra.store_rows import TaskRow

# Why a remote branch was left: its local branch was (it moved), so nothing is to retry later.
LOCAL_KEPT = "its local branch was kept; kept there too"


def merge_targets(repo: git.Repo, base_commit: str | None = None) -> list[str]:
    """What a branch may be merged into (a task merged into any of these counts as merged).

    The main checkout's branch (or HEAD), the run base, and `swarm merge`'s integration branches.
    """
    branch = git_branches.current_branch(repo)
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
                self._sets[target] = git_branches.merged_tips(self.repo, target)
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
        target=f"{branch} on {strip_userinfo(remote)}",
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


def delete_branches(
    repo: git.Repo, batch: list[Finding], *, moves: ref_moves.RefMoves
) -> list[Result]:
    """Delete the branches of *batch* with a few git processes, whatever their number.

    Each is checked (still there, checked out in no worktree, still merged where the plan
    said) against one read of every branch, worktree and merge target; those that pass go in
    one `update-ref` transaction, deleting each only at the tip just checked. If it fails (a
    branch moved, a stale lock), nothing was deleted: each is deleted alone at that tip.
    """
    tips = git_branches.branch_tips(repo)
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
    repo: git.Repo, f: Finding, ref: str, tip: str, *, together: bool, moves: ref_moves.RefMoves
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


def delete_remote_branches(repo: git.Repo, batch: list[Finding], *, kept: set[str]) -> list[Result]:
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
    """:func:`delete_remote_branches` for the findings of one remote, *url*."""
    branches = [f.branch or f.target for f in found.values()]
    try:
        tips = git_remotes.remote_tips(repo, url, branches)
    except SwarmError as exc:
        output = exc.output if isinstance(exc, CommandError) else str(exc)
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        first = next(
            (line for line in lines if line.startswith("fatal:")), lines[0] if lines else ""
        )
        why = (
            f"cannot reach {strip_userinfo(url)} ({strip_userinfo(first)}); kept there: "
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
    outcome = git_remotes.delete_remote_branches(repo, url, leases) if leases else {}
    for index, f in found.items():
        branch = f.branch or f.target
        if branch in outcome:
            why = outcome[branch]
            detail = f"deleted (was {leases[branch][:12]})" if not why else f"{why}; kept"
            done[index] = Result(finding=f, fixed=not why, detail=detail)
    return done

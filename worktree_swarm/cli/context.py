"""What a `swarm` command works on: the repository (``-C``), its store, your checkout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from worktree_swarm.core.task import BRANCH_PREFIX
from worktree_swarm.git import branches as git_branches
from worktree_swarm.git import repo as git
from worktree_swarm.report import run_info

if TYPE_CHECKING:
    from worktree_swarm.infra.store import Store


def store_to_read(repo: git.Repo) -> Store:
    """The store for a command that only looks; on a full disk, as last written (said once)."""
    store = run_info.open_store(repo, to_read=True)
    if store.read_only:
        click.echo(f"note: the disk is full; showing {store.path} as last written", err=True)
    return store


def context_repo(ctx: click.Context, *, empty_ok: bool = False) -> git.Repo:
    """The repository; *empty_ok* for a command about runs (none in one without commits)."""
    git.require_git()
    return git.open_repo(Path(ctx.obj["dir"]), empty_ok=empty_ok)


def your_checkout(ctx: click.Context, repo: git.Repo) -> Path:
    """The checkout of yours swarm runs in: a linked worktree of yours, else the main one.

    Not one of swarm's (a task's worktree, the integration worktree, on a ``swarm/`` branch):
    a merge built on a task's work, or pull requests into a task's branch, are nobody's.
    """
    checkout = git.checkout_root(Path(ctx.obj["dir"]))
    branch = git_branches.current_branch(repo, checkout) or ""
    return repo.root if branch.startswith(BRANCH_PREFIX) else checkout


def say_wait(seconds: float, why: str) -> None:
    """Tell the user on stderr that the command waits *seconds* and why."""
    click.echo(f"waiting {seconds:.0f}s: {why}", err=True)

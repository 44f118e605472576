"""Merging commits without a checkout (`git merge-tree --write-tree`), and its conflicts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from worktree_swarm.core.errors import BadInputError, CommandError, GitError
from worktree_swarm.core.paths import Repo
from worktree_swarm.core.text import paths_text
from worktree_swarm.git import runner
from worktree_swarm.git.gitconfig import identity_env
from worktree_swarm.git.repo import rev_parse, run


class MergeConflictError(GitError):
    """Merging commits would conflict; ``files`` names the conflicted paths."""

    def __init__(self, message: str, *, files: Sequence[str]) -> None:
        super().__init__(message)
        self.files = tuple(files)

    def __reduce__(self) -> tuple[Callable[..., MergeConflictError], tuple[str, tuple[str, ...]]]:
        return _merge_conflict, (str(self), self.files)


def _merge_conflict(message: str, files: tuple[str, ...]) -> MergeConflictError:
    return MergeConflictError(message, files=files)


def merge_commits(repo: Repo, commits: Sequence[str], *, message: str, author: str) -> str:
    """Return a new merge commit whose parents are *commits*, touching no checkout.

    The trees are merged pairwise in order with ``git merge-tree --write-tree``; the result is
    one commit with every input as a parent (a single input is returned as is).
    Raises MergeConflictError naming the conflicted files.
    """
    if not commits:
        raise BadInputError("merge_commits needs at least one commit")
    env = identity_env(author)
    shas: list[str] = []
    for rev in commits:
        sha = rev_parse(repo, f"{rev}^{{commit}}")
        if sha is None:
            raise GitError(f"{rev!r} is not a commit in {repo.root}")
        shas.append(sha)
    if len(shas) == 1:
        return shas[0]
    acc = shas[0]
    tree = ""
    for i, other in enumerate(shas[1:], start=1):
        args = ("merge-tree", "--write-tree", "--name-only", "-z", acc, other)
        res = runner.run_names(repo.root, *args, check=False)  # names shown as git quotes them
        if res.returncode not in (0, 1):
            raise CommandError(["git", "merge-tree", acc, other], res.returncode, res.stderr)
        tree, conflicted = merge_tree_result(res.stdout)
        if res.returncode == 1:
            names = paths_text(conflicted) or "(unknown files)"
            raise MergeConflictError(
                f"merging {commits[i]} into {', '.join(commits[:i])} conflicts in {names}",
                files=conflicted,
            )
        if i < len(shas) - 1:
            # merge-tree (git < 2.40) merges commits, not trees: the running result needs a
            # commit of its own to be merged with the next input. It stays unreferenced.
            acc = _commit_tree(repo, tree, shas[: i + 1], message=message, env=env)
    return _commit_tree(repo, tree, shas, message=message, env=env)


def merge_tree_result(out: str) -> tuple[str, tuple[str, ...]]:
    """The tree and the conflicted paths of ``merge-tree --write-tree --name-only -z`` *out*.

    The paths are the unmerged ones; when there are none (a conflict git records in no
    index entry: a file in the way of an implicit directory rename), those its conflict
    messages name.
    """
    tree, *fields = out.split("\0")
    end = fields.index("") if "" in fields else len(fields)
    unmerged = tuple(dict.fromkeys(fields[:end]))
    if unmerged:
        return tree, unmerged
    named: list[str] = []
    messages = iter(fields[end + 1 :])
    # Each message: the number of paths, the paths, its type ("CONFLICT (...)"), its text.
    for count in messages:
        if not count.isdigit():
            break
        paths = [next(messages, "") for _ in range(int(count))]
        if next(messages, "").startswith("CONFLICT ("):
            named += paths
        next(messages, "")
    return tree, tuple(dict.fromkeys(p for p in named if p))


def _commit_tree(
    repo: Repo, tree: str, parents: Sequence[str], *, message: str, env: Mapping[str, str]
) -> str:
    args = ["commit-tree", "--no-gpg-sign", "-m", message]
    for parent in parents:
        args += ["-p", parent]
    return run(repo.root, [*args, tree], env=env).stdout.strip()

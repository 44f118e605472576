"""Checkpoints: commit what an agent left in its worktree; the errors naming what was left out."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from worktree_swarm.core.errors import CommandError, GitError
from worktree_swarm.core.run_settings import DEFAULT_MAX_FILE
from worktree_swarm.core.text import one_line, path_text
from worktree_swarm.core.units import format_size
from worktree_swarm.git import index_copy, runner
from worktree_swarm.git.config_overrides import filter_origins
from worktree_swarm.git.gitconfig import identity_env
from worktree_swarm.git.gitfiles import (
    head_in,
    mid_operation,
    operation_in_progress,
    past_stale_lock,
    repair_checkout,
    restore_deleted_branch,
)
from worktree_swarm.git.index import populated_gitlinks, stage_gitlinks, unhide_edits
from worktree_swarm.git.repo import in_batches, rev_parse_in, run
from worktree_swarm.git.staged import (
    filtered_on_disk,
    named_blobs,
    unstage_filtered,
    unstage_over,
    unstage_secrets,
)
from worktree_swarm.git.status import is_below, submodule_paths

if TYPE_CHECKING:
    import subprocess


def trailers(task_id: str, attempt: int | None, agent: str) -> str:
    """Commit-message trailers naming the task, attempt and agent of a checkpoint."""
    lines = [f"Swarm-Task: {task_id}"]
    if attempt is not None:
        lines.append(f"Swarm-Attempt: {attempt}")
    lines.append(f"Swarm-Agent: {agent}")
    return "\n\n" + "\n".join(lines)


# --sparse: in a sparse worktree, files an agent wrote outside the cone are its work too.
# --ignore-errors: a path git refuses (`.GIT/x`, `git~1`) or cannot read no longer stops the
# whole `add`; the rest is staged and those are named (RefusedPathsError).
_ADD = ["add", "--all", "--sparse", "--verbose", "--ignore-errors"]


def checkpoint(
    worktree: Path,
    *,
    message: str,
    author: str,
    exclude: Sequence[str] = (),
    droppings: Sequence[str] = (),
    report_secrets: bool = False,
    max_file: int | None = DEFAULT_MAX_FILE,
    agent_ran: bool = False,
    branch: str | None = None,
    onto: str | None = None,
) -> str | None:
    """Commit everything in *worktree* (edits and untracked files, minus ignored ones).

    Paths in *exclude* (relative to the worktree root, taken literally) stay out of the
    branch: never added, and taken out of the index (not the disk) when an agent added or
    committed them itself. They are the ``link`` symlinks, which an ignore rule like
    ``node_modules/`` does not match because a symlink is not a directory to git.
    *droppings* are glob patterns (from the worktree root) of an agent tool's own files, such
    as aider's chat history: never added, without touching the user's ignore files. Returns
    the new HEAD, or None when there was nothing to commit; GitError, committing nothing, while
    a merge (cherry-pick, revert, rebase) waits with unresolved conflicts. Hooks are skipped
    (``--no-verify``) and *author* (``Name <email>``) is also the committer. A checkout that
    was never populated (see :func:`checkout_incomplete`) is repaired first instead of
    committing its missing files as deletions; where an agent ran (*agent_ran*), one whose
    index it deleted gets an index of HEAD alone, its files committed as they are. A file
    holding the value of a secret environment variable is left out (staged as it was); with
    *report_secrets* that raises SecretLeftOutError once the rest is committed. So is a file
    over *max_file* bytes (None: no cap), raising TooBigError: git hashes it once, it is never
    committed; and a file whose filter swarm's git does not run, raising FilteredError: never
    added (nor hashed), or, staged by the agent, unstaged (:func:`unstage_filtered`). The
    branch HEAD names, deleted, is put back first (only *branch*, a task's, when given: see
    :func:`restore_deleted_branch`). With *onto* (a branch) the commit goes onto that branch
    alone, by compare-and-swap (:func:`_commit_onto`): SwitchedError, nothing committed, when
    HEAD is elsewhere by then.
    """
    env = identity_env(author)
    repair_checkout(worktree, agent_ran=agent_ran)
    restore_deleted_branch(worktree, branch)
    if mid_operation(worktree) and run(worktree, ["ls-files", "-z", "-u"]).stdout:
        # `add --all` would take the conflict markers as the resolution, and the commit
        # would conclude the merge with them.
        raise GitError(
            f"{worktree}: a merge with unresolved conflicts is in progress; resolve it or abort "
            "it (`git merge --abort`) there first"
        )
    # Made again from the index as it is now where another git wrote it meanwhile.
    done = index_copy.afresh(lambda: _stage(worktree, exclude, droppings, max_file))
    if onto is None:
        head = _commit(worktree, message, env, added=done.added.strip() != "")
    else:
        head = _commit_onto(worktree, onto, message, env)
    if done.embedded:
        raise EmbeddedRepositoryError(worktree, [path_text(p) for p in done.embedded], head)
    if done.refused:
        raise RefusedPathsError(worktree, [path_text(p) for p in done.refused], head)
    if done.filtered:
        drivers = {driver for _, driver in done.filtered}
        origins = filter_origins(worktree, drivers)
        told = [f"{path_text(path)} (filter {driver})" for path, driver in done.filtered]
        raise FilteredError(worktree, told, head, _ORIGINS[frozenset(origins)])
    if done.secret and report_secrets:
        raise SecretLeftOutError(worktree, [path_text(p) for p in done.secret], head)
    if done.big and max_file is not None:
        raise TooBigError(worktree, done.big, head, max_file)
    return head


def _stage(
    worktree: Path, exclude: Sequence[str], droppings: Sequence[str], max_file: int | None
) -> _Staged:
    """Stage what *worktree* holds into its index, but what a commit must not hold."""
    skip = _unstaged(worktree, exclude)
    unhide_edits(worktree)
    # A gitlink checked out here is not looked into: a submodule's new HEAD is staged, one an
    # agent made and committed itself is an embedded repository like one it only made.
    links = populated_gitlinks(worktree)
    declared = submodule_paths(worktree) if links else set()
    stage_gitlinks(worktree, [link for link in links if link in declared])
    # Never hashed: a decrypted git-crypt file would be a loose object in the clear.
    kept_out = filtered_on_disk(worktree, worktree)
    # Staged apart (quarantine): what is left out is never an object of the repository's.
    with index_copy.staging(worktree) as staging:
        apart = staging.env
        skipped = [*skip, *links, *(path for path, _ in kept_out)]
        added, unborn, refused = _add(worktree, skipped, droppings, apart)
        linked = [*embedded_repos(worktree, added), *(p for p in links if p not in declared)]
        for literal in in_batches(f":(literal,top){path}" for path in linked):
            # A commit would hold a commit id nobody else has, not their files.
            rm = ["rm", "-r", "-q", "-f", "--cached", "--ignore-unmatch", "--", *literal]
            run(worktree, rm, env=apart)
        filtered = list(dict.fromkeys([*kept_out, *unstage_filtered(worktree, env=apart)]))
        secret = unstage_secrets(worktree, env=apart)
        big = unstage_over(worktree, added, max_file, env=apart)
        # What the index still names, when it left out something `add` hashed.
        staging.settle(named_blobs(worktree, env=apart) if secret or big or filtered else None)
    return _Staged(added, [*unborn, *linked], refused, filtered, secret, big)


class _Staged(NamedTuple):
    """What a checkpoint's staging did: `add`'s output, and what it left out, by why."""

    added: str
    embedded: list[str]  # repositories of their own, made or checked out (gitlinks)
    refused: list[str]
    filtered: list[tuple[str, str]]  # each with its filter
    secret: list[str]
    big: list[str]  # each with its size


class LeftOutError(GitError):
    """A checkpoint left some paths of an agent's out (the rest committed), saying why."""

    # Says why, naming the {paths} and the {worktree} they stay in.
    template: ClassVar[str] = "left out {paths}; they stay in {worktree}"

    def __init__(self, worktree: Path, paths: Sequence[str], head: str | None) -> None:
        """Name *paths* (in *worktree*); *head*: the checkpoint's commit of everything else."""
        self.worktree = worktree
        self.paths = tuple(paths)
        self.head = head
        super().__init__(self._message())

    def _message(self) -> str:
        return self.template.format(paths=", ".join(self.paths), worktree=self.worktree)

    def __reduce__(self) -> tuple[type[LeftOutError], tuple[Path, tuple[str, ...], str | None]]:
        return type(self), (self.worktree, self.paths, self.head)


class EmbeddedRepositoryError(LeftOutError):
    """A checkpoint found repositories an agent made inside its worktree (the rest committed)."""

    template = (
        "made a git repository inside its worktree ({paths}): a commit would hold only its "
        "commit id, not its files; they stay in {worktree}"
    )


class RefusedPathsError(LeftOutError):
    """A checkpoint left out paths git refused to stage (the rest committed)."""

    template = (
        "wrote paths git refuses to store or could not read ({paths}): left out of its commit, "
        "they stay in {worktree}; the rest is committed"
    )


class TooBigError(LeftOutError):
    """A checkpoint left out files over its size cap (the rest committed)."""

    template = (
        "wrote files over max_file ({paths}): left out of its commit (GitHub refuses a file "
        "over 100 MiB), they stay in {worktree}; the rest is committed"
    )

    def __init__(self, worktree: Path, paths: Sequence[str], head: str | None, limit: int) -> None:
        """As LeftOutError; *limit* is the cap, in bytes."""
        self.limit = limit
        shown = [f"{format_size(limit)}: {paths[0]}", *paths[1:]] if paths else []
        super().__init__(worktree, shown, head)
        self.paths = tuple(paths)

    def __reduce__(self) -> tuple[type[TooBigError], tuple[Path, tuple[str, ...], str | None, int]]:  # type: ignore[override]
        return type(self), (self.worktree, self.paths, self.head, self.limit)


REPOSITORY = "the repository's own config"
USER_LEVEL = "your global or system git config (new there since the run began)"
# filter_origins -> FilteredError's origin
_ORIGINS = {
    frozenset({"repository"}): REPOSITORY,
    frozenset({"user"}): USER_LEVEL,
    frozenset({"repository", "user"}): f"{REPOSITORY} or {USER_LEVEL}",
    frozenset(): REPOSITORY,  # changed since: as it was
}


class FilteredError(LeftOutError):
    """A checkpoint left out files whose filter swarm's git does not run (the rest committed)."""

    template = (
        "changed files whose filter comes from {origin}, which swarm's git never runs "
        "({paths}): left out of its commit (it would hold them unfiltered, a git-crypt file in "
        "the clear), they stay in {worktree}; the rest is committed"
    )

    def __init__(
        self, worktree: Path, paths: Sequence[str], head: str | None, origin: str = REPOSITORY
    ) -> None:
        """As LeftOutError; *origin* says which config the filters come from."""
        self.origin = origin
        super().__init__(worktree, paths, head)

    def _message(self) -> str:
        return self.template.format(
            paths=", ".join(self.paths), worktree=self.worktree, origin=self.origin
        )

    def __reduce__(  # type: ignore[override]
        self,
    ) -> tuple[type[FilteredError], tuple[Path, tuple[str, ...], str | None, str]]:
        return type(self), (self.worktree, self.paths, self.head, self.origin)


class SecretLeftOutError(LeftOutError):
    """A checkpoint left out files holding a secret value (the rest committed)."""

    template = (
        "wrote the value of a secret into {paths}: left out of its commit, it stays in "
        "{worktree}; the rest is committed"
    )


_UNBORN = re.compile(r"^error: '(.+)/' does not have a commit checked out$", re.MULTILINE)


def unborn_repositories(add_errors: str) -> list[str]:
    """The repositories without a commit that an `add`'s *add_errors* say stopped it."""
    return _UNBORN.findall(add_errors)


def refused_paths(add_errors: str) -> list[str]:
    """The paths an `add --ignore-errors`'s *add_errors* say it could not stage."""
    return [a or b for a, b in _REFUSED.findall(add_errors)]


_REFUSED = re.compile(r"^error: unable to (?:add '(.+)' to index|index file '(.+)')$", re.MULTILINE)


def _unstaged(worktree: Path, exclude: Sequence[str]) -> list[str]:
    """Take *exclude* out of *worktree*'s index; those of them `add` must be told to skip.

    `add` fails on a pathspec naming an ignored file, even an exclude; it skips those anyway.
    """
    ignored: set[str] = set()
    for literal in in_batches(f":(literal,top){path}" for path in exclude):
        run(worktree, ["rm", "-r", "-q", "--cached", "--sparse", "--ignore-unmatch", "--",
                        *literal])  # fmt: skip
        listed = ("ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory")
        out = runner.run_bytes(worktree, *listed, "--", *literal).stdout
        # As bytes: a name that is not UTF-8 must match its excluded self (surrogates).
        ignored |= {os.fsdecode(p).rstrip("/") for p in out.split(b"\0") if p}
    # `--directory` names a wholly ignored directory, not the files in it.
    return [
        path
        for path in exclude
        if not {path.rstrip("/"), *map(str, PurePosixPath(path).parents)} & ignored
    ]


def _add(
    worktree: Path, exclude: Sequence[str], droppings: Sequence[str], env: Mapping[str, str]
) -> tuple[str, list[str], list[str]]:
    """`add --all` but *exclude* and *droppings*: its output, unborn repositories, refused paths.

    git refuses to add a repository an agent made but never committed in (`npm init` and the
    like make one), and a path it refuses or cannot read; with ``--ignore-errors`` it stages
    the rest, and those are left out and named. So are the directories it cannot look into
    (an agent's ``chmod 0``), which git only warns about: their files would be left out
    unseen. One it can list but not enter stops the whole `add`: it is left out and `add` runs
    again.
    """
    sealed: list[str] = []
    for _ in range(_SEALED_MAX + 1):
        res = _add_once(worktree, [*exclude, *sealed], droppings, env)
        stuck = _CANNOT_STAT.search(res.stderr)
        if res.returncode == 0 or stuck is None or len(sealed) == _SEALED_MAX:
            break
        parent = PurePosixPath(stuck[1]).parent
        if not is_below(parent) or str(parent) in sealed:
            break
        sealed.append(str(parent))
    unborn, refused = unborn_repositories(res.stderr), refused_paths(res.stderr)
    if res.returncode != 0 and not (unborn or refused):
        raise CommandError(["git", *_ADD], res.returncode, res.stdout + res.stderr)
    return res.stdout, unborn, [*unseen_paths(res.stderr, [f"{s}/" for s in sealed]), *refused]


def _add_once(
    worktree: Path, exclude: Sequence[str], droppings: Sequence[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    # Its output names files (those it added, those it could not): read as file names.
    if not (exclude or droppings):
        return runner.run_names(worktree, *_ADD, check=False, env=env)
    pathspec = [
        ":(top)",
        *(f":(exclude,literal,top){path}" for path in exclude),
        *(f":(exclude,glob,top){pattern}" for pattern in droppings),
    ]
    # On its input, NUL-separated: a `copy` glob may leave thousands of files out.
    return runner.run_names(
        worktree,
        *_ADD,
        "--pathspec-from-file=-",
        "--pathspec-file-nul",
        check=False,
        input_text="\0".join(pathspec) + "\0",
        env=env,
    )


# Directories without search permission that one checkpoint leaves out, each costing an `add`.
_SEALED_MAX = 32
# git stops at an untracked file it cannot stat (in a directory it can list but not enter).
_CANNOT_STAT = re.compile(r"^fatal: unable to stat '(.+)': Permission denied$", re.MULTILINE)
# It warns about a directory it cannot list, and perror()s a tracked file it cannot stat.
_UNSEEN_DIR = re.compile(
    r"^warning: could not open directory '(.+)': Permission denied$", re.MULTILINE
)
_UNSEEN_FILE = re.compile(r"^(?!warning: |error: |fatal: )(.+): Permission denied$", re.MULTILINE)


def unseen_paths(add_errors: str, sealed: Sequence[str] = ()) -> list[str]:
    """The directories (``name/``) and tracked files an `add`'s *add_errors* say it could not see.

    *sealed*: directories already left out. A file inside a directory named is not named again.
    """
    folders = [*sealed, *_UNSEEN_DIR.findall(add_errors)]
    files = [
        name
        for name in _UNSEEN_FILE.findall(add_errors)
        if not any(name.startswith(folder) for folder in folders)
    ]
    return sorted({*folders, *files})


def embedded_repos(worktree: Path, added: str) -> list[str]:
    """The paths `add --verbose` said it added that are repositories of their own."""
    paths = [
        line[5:-1].rstrip("/")
        for line in added.splitlines()
        if line.startswith("add '") and line[-1] == "'"
    ]
    # A symlink to a checkout is stored as a link, not looked into.
    found = [
        p for p in paths if (worktree / p / ".git").exists() and not (worktree / p).is_symlink()
    ]
    if found:  # submodules are not embedded ones
        submodules = submodule_paths(worktree)
        found = [p for p in found if p not in submodules]
    return found


def _commit(worktree: Path, message: str, env: Mapping[str, str], *, added: bool) -> str | None:
    """Commit the index of *worktree*: its new HEAD, or None when it held nothing new."""
    # --no-gpg-sign: a user's commit.gpgSign would otherwise ask for a passphrase nobody types.
    commit = ["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message]
    if not added or mid_operation(worktree):
        # Nothing new staged (an agent may have staged its work itself), or a merge or
        # cherry-pick an agent left, which a commit would conclude even with no change: ask
        # whether the index differs from HEAD first.
        if run(worktree, ["diff", "--cached", "--quiet"], check=False).returncode == 0:
            return None
        res = past_stale_lock(worktree, commit, env=env)
        if res.returncode != 0:
            raise CommandError(["git", *commit], res.returncode, res.stdout + res.stderr)
    else:
        # `add` staged something: commit first and ask whether the index differs from HEAD
        # only when the commit fails (one git process less per checkpoint that has work).
        res = past_stale_lock(worktree, commit, env=env)
        if res.returncode != 0:
            if run(worktree, ["diff", "--cached", "--quiet"], check=False).returncode == 0:
                return None
            raise CommandError(["git", *commit], res.returncode, res.stdout + res.stderr)
    head = head_in(worktree)
    if head is None:
        raise GitError(f"checkpoint in {worktree} left no HEAD")
    return head


class SwitchedError(GitError):
    """A checkpoint meant for one branch found its worktree's HEAD elsewhere: nothing committed."""


def _commit_onto(worktree: Path, branch: str, message: str, env: Mapping[str, str]) -> str | None:
    """Commit the index of *worktree* onto *branch* only: its new tip, or None when nothing new.

    `git commit` commits onto wherever HEAD is as it runs: a worktree switched since HEAD was
    last looked at (a user's `git checkout main` there, an agent's still running) had the
    work committed onto that branch. Here the tree is written first, then HEAD must still be
    on *branch* (else SwitchedError), and the branch moves from the tip the commit is made on
    to the commit, or not at all (GitError, nothing committed, when it moved meanwhile).
    """
    ref = f"refs/heads/{branch}"
    if mid_operation(worktree):  # a commit of ours would not conclude it as `git commit` does
        doing = operation_in_progress(worktree) or "a git operation"
        raise GitError(f"{worktree}: {doing} is in progress; finish or abort it there first")
    written = past_stale_lock(worktree, ["write-tree"])
    if written.returncode != 0:
        raise CommandError(["git", "write-tree"], written.returncode, written.stderr)
    tree = written.stdout.strip()
    on = run(worktree, ["symbolic-ref", "-q", "HEAD"], check=False).stdout.strip()
    if on != ref:  # the tree written may be of that checkout's index: never committed
        where = on.removeprefix("refs/heads/") or "a detached HEAD"
        raise SwitchedError(
            f"{worktree} is on {where} now, not {branch}: nothing committed there, its work "
            "stays in it"
        )
    tip = rev_parse_in(worktree, f"{ref}^{{commit}}")
    if tip is not None and rev_parse_in(worktree, f"{tip}^{{tree}}") == tree:
        return None
    parents = ["-p", tip] if tip is not None else []
    commit = ["commit-tree", "--no-gpg-sign", *parents, "-m", message, tree]
    new = run(worktree, commit, env=env).stdout.strip()
    subject = message.partition("\n")[0]
    # The old value checked as the ref is locked: a branch moved since stays where it went.
    update = ["update-ref", "-m", f"commit: {subject}", ref, new, tip or ""]
    moved = past_stale_lock(worktree, update)
    if moved.returncode != 0:
        raise GitError(
            f"{branch} moved while a checkpoint was committed onto it in {worktree}: nothing "
            f"committed, its work stays there ({one_line(moved.stderr)})"
        )
    return new

"""The guard's checks that worktrees are where they were: the run's and your linked ones.

Every task worktree is expected where swarm made it, busy or not: one another agent removed
or moved is put back (moved back, or made again from its branch), never deleted; swarm's own
makings and removals (:meth:`WorktreeChecks.provisioning`, `swarm clean`'s announcements)
are not judged. Your linked worktrees removed or moved whole (most likely your own `git
worktree remove` or `move`) are followed: watched no more, or watched where they are now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil

from worktree_swarm.core.errors import SwarmError
from worktree_swarm.core.text import path_text
from worktree_swarm.git import gitfiles, runner, tampering, worktrees
from worktree_swarm.git import repo as git
from worktree_swarm.guard import hooks_dir, surface, surface_diff, surface_entry
from worktree_swarm.guard.baselines import Baselines, drop_copies, seed
from worktree_swarm.guard.model import WORKTREE_PREFIX, Violation
from worktree_swarm.guard.recovery import MOVING, move_back, moved_to
from worktree_swarm.guard.ref_checks import RefChecks, ref_tip
from worktree_swarm.guard.ref_moves import worktree_key
from worktree_swarm.guard.restore import restore_checkout
from worktree_swarm.guard.snapshot import capture, index_path
from worktree_swarm.infra import fs


class WorktreeChecks(Baselines, RefChecks):
    """Task worktrees kept where swarm made them; your linked worktrees followed."""

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
                whole = tampering.own_admin(self.repo, path)
                root = _identity(Path(real).parent)
                # Each task's worktree by where it was when the task took it: one look per
                # worktree made, however many tasks the run has had.
                for task_id, known in list(self._trees.real.items()):
                    if known != real:
                        continue
                    # Where swarm left its branch: a later move is its agent's, or judged.
                    branch = f"refs/heads/swarm/{task_id}"
                    self._set_ref(branch, ref_tip(self.repo, branch))
                    if whole is None:
                        self._trees.admins.pop(task_id, None)
                    else:
                        self._trees.admins[task_id] = whole.name
                    if root is not None:
                        self._trees.roots[task_id] = root
                    self._trees.rootless.discard(task_id)  # made afresh: judged as ever
                if admin is not None and admin.parent == worktrees_dir:
                    label = f"worktrees/{admin.name}/config.worktree"
                    entry = surface_entry.read_one(common, label)
                    after = {} if entry is None else {label: entry}
                    if entry != self._surface.get(label):  # as a rule: none before, none now
                        if surface_diff.worktree_made(common, self._surface, after, label):
                            self._surface_owed = True  # git's copy of yours: a resumed guard's
                        else:
                            self._surface_dirty = True
                    if entry is None:
                        self._surface.pop(label, None)
                    else:
                        self._surface[label] = entry

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

    def _scan_worktrees(
        self, began: float, pending: set[str], *, again: bool = False
    ) -> list[Violation]:
        """Each task worktree where swarm made it: one removed or moved is put back.

        A worktree's ``.git`` is looked at again only where a watch saw a change that may
        concern it (file_stats.py), and in the last scan; git's admin dir is read only when
        it is gone. Under the guard's lock and the repository's. *again*: a second look in the
        same scan, which leaves a worktree this scan doubted to the next scan.
        """
        found = []
        self._file_stats.refresh()
        for task_id, path in list(self._trees.paths.items()):
            if again and task_id in self._trees.doubted:
                continue  # judged now, a move caught half way would be taken for a removal
            violation = self._check_worktree(task_id, path, began, pending, kept=True)
            if violation is not None:
                found.append(violation)
        self._worktrees_checked = began
        return found

    def _check_worktree(
        self,
        task_id: str,
        path: Path,
        began: float,
        pending: set[str],
        *,
        at_once: bool = False,
        kept: bool = False,
    ) -> Violation | None:
        """*kept*: its ``.git`` as last seen there unless a watch saw a change (in a scan)."""
        # A doubt lasts until this look: the worktree is judged, left alone or doubted afresh.
        since = self._trees.doubted.pop(task_id, None)
        known = self._trees.admins.get(task_id)
        there = kept and self._file_stats.there(f"{path}/.git", fresh=self._closing.is_set())
        if there or _present(path / ".git"):
            if known is None:  # made by an earlier manager, or not yet seen whole
                admin = tampering.own_admin(self.repo, path)
                if admin is not None:
                    self._trees.admins[task_id] = admin.name
            return None  # a `.git` that names another is tampering: see tampering.tampered
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
                if since is None and not at_once and self._look_again(path, known):
                    # Judged on the next scan from where this one's window began: an agent
                    # that removed it and ended meanwhile is still a suspect.
                    self._trees.doubted[task_id] = self._worktrees_checked
                    return None
                window = (self._worktrees_checked if since is None else since, began)
                return self._worktree_gone(task_id, path, known, window)
        self._forget_worktree(task_id)  # removed by `swarm clean`, as it said
        return None

    def _look_again(self, path: Path, known: str) -> bool:
        """Whether to look at the missing worktree *path* once more before judging.

        Once, on the next scan (the final scan judges at once): git moves a worktree by
        renaming it, then writes its new place into the admin dir, and a root removed whole
        (``rm -rf``) goes worktree by worktree before it goes itself. Caught half way, either
        would be taken for a removal by a sibling.
        """
        if self._closing.is_set() or not path.parent.is_dir():
            return False
        gitdir = self.repo.common_dir / "worktrees" / known / "gitdir"
        with contextlib.suppress(OSError, UnicodeDecodeError):
            named = fs.read_text(gitdir).strip()
            if os.path.realpath(Path(named).parent) != os.path.realpath(path):
                return False  # moved, and its new place written down: judged now
        return True

    def _worktree_gone(
        self, task_id: str, path: Path, known: str, window: tuple[float, float]
    ) -> Violation | None:
        """*task_id*'s worktree, registered in admin dir *known*, is not at *path*: whose doing.

        The suspects are the agents alive within *window*.
        """
        busy = task_id in self._busy
        suspects = self._agents.suspects(window, exclude=(task_id,))
        if not suspects and busy:  # its own agent, alone at the time
            suspects = self._agents.suspects(window, exclude=())
        if not suspects:  # nobody of ours was running: the user's doing
            self._forget_worktree(task_id)
            return None
        admin = self.repo.common_dir / "worktrees" / known
        moved = moved_to(admin, path) or self._half_moved(admin, path)
        what = "was removed" if moved is None else f"was moved to {moved}"
        root = path.parent
        was = self._trees.roots.get(task_id)
        # Gone, or another directory now (the file system mounted there is not): not a
        # sibling's doing more than its own; every worktree in it went.
        rootless = moved is None and (
            task_id in self._trees.rootless
            or not root.is_dir()
            or (was is not None and _identity(root) != was)
        )
        self._trees.rootless.discard(task_id)
        if rootless:  # the others there went with it: judged alike once found gone
            others = [t for t, p in self._trees.paths.items() if p.parent == root]
            self._trees.rootless.update(t for t in others if t != task_id)
        found = Violation(
            number=0,
            where=task_id,
            worktree=what,
            suspects=suspects,
            root_gone=str(root) if rootless else "",
        )
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

    def _half_moved(self, admin: Path, path: Path) -> Path | None:
        """Where a move git left half done took the task worktree of *admin*, if seen.

        git renames the worktree, then names its new place in the admin dir: killed (or slow)
        in between, the admin dir still names *path*, and only the moved worktree's ``.git``
        names the admin dir. Looked for among *path*'s siblings and in your checkouts (their
        untracked nested repositories, which a comparison of one would delete).
        """
        if not os.path.lexists(admin / "gitdir"):
            return None
        found: list[str] = []
        with contextlib.suppress(OSError):
            found = [entry.path for entry in os.scandir(path.parent)]
        args = ("ls-files", "-z", "--others", "--exclude-standard")
        for place in [p for p in list(self._places.values()) if p.users]:
            with contextlib.suppress(SwarmError):  # a worktree of yours being removed
                listed = runner.run_names(place.path, *args, check=False).stdout.split("\0")
                found += [str(place.path / name) for name in listed if name.endswith("/")]
        real = os.path.realpath(admin)
        for where in map(Path, found):
            with contextlib.suppress(OSError, SwarmError):
                if stat.S_ISREG((where / ".git").lstat().st_mode) and (
                    os.path.realpath(git.git_dir(where)) == real
                ):
                    return where
        return None

    def _keep_out(self, moved: Path) -> None:
        """Leave *moved*, a task worktree left in your checkout, out of its comparisons."""
        root, real = Path(os.path.realpath(self.repo.root)), Path(os.path.realpath(moved))
        if real != root and real.is_relative_to(root):
            self._exclude += (f":(exclude,top,literal){real.relative_to(root).as_posix()}",)

    def _forget_worktree(self, task_id: str) -> None:
        """No longer expect *task_id*'s worktree where swarm made it, nor compare it there."""
        self._trees.admins.pop(task_id, None)
        self._trees.doubted.pop(task_id, None)
        place = self._places.pop(task_id, None)
        if place is not None:
            self._changes.forget(task_id)
            drop_copies(place)

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
            _name_place(self.repo.common_dir / "worktrees" / admin, moved)
            # Noted first: a manager killed before the move is done has the next one finish it.
            note = self._dir / MOVING / admin
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(json.dumps([str(moved), str(path)]), encoding="utf-8")
            try:
                move_back(self.repo, moved, path)
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
                gitfiles.populate(path, None)
        place = self._places.get(task_id)
        if place is not None:
            if moved is None:
                seed(place.scratch, place.saved_index)
                now = capture(path, place.scratch, self._snapshots)
                restore_checkout(
                    path,
                    base=self._base(place),
                    now=now,
                    saved_index=place.saved_index,
                    scratch=place.scratch,
                    objects=self._snapshots,
                    exclude=(),
                )
            self._changes.forget(task_id)
            self._changes.watch(task_id, path, self._git_files(index_path(path).parent))
            self._changes.mark(task_id)  # compared with its baseline in this scan
        return tampering.own_admin(self.repo, path) is not None

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
            elif (moved := moved_to(admin, checkout)) is not None:
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
            # Gone with it: its operation in progress (kept when moved), its hooks directory.
            held = [x for x in self._surface if moved is None or x.startswith(f"{checkout}/")]
            for label in surface.ties(common, checkout, admin, held=held):
                self._surface.pop(label, None)
            self._hooks = hooks_dir.hooks_paths(self.repo.root, self._linked)
            self._surface_dirty = True  # saved by the surface scan
            where = users_label(checkout)
            if self._places.pop(where, None) is not None:
                self._changes.forget(where)
            if moved is None:
                self._log(f"your worktree {checkout} was removed: no longer watched")
                continue
            self._linked[moved] = admin
            for label in surface.ties(common, moved, admin):
                entry = surface_entry.read_one(common, label)
                if entry is not None:
                    self._surface[label] = entry
            self._hooks = hooks_dir.hooks_paths(self.repo.root, self._linked)
            there = [hooks for hooks in self._hooks if hooks.is_relative_to(moved)]
            for label, entry in surface.read(common, there).items():  # its hooks directory
                if label.startswith(f"{moved}/"):
                    self._surface[label] = entry
            self._keep_out(moved)  # moved into your checkout: not new files of it
            with self._job(users_label(moved)):
                self._watch(users_label(moved), moved)
            self._log(f"your worktree {checkout} was moved to {moved}: watched there")


def users_label(checkout: Path) -> str:
    """The name of your linked worktree *checkout* in the guard's notes: one printable line."""
    return WORKTREE_PREFIX + path_text(str(checkout))


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


def _name_place(admin: Path, moved: Path) -> None:
    """Name *moved* in *admin*'s ``gitdir``, as git's move does after its rename (if not yet)."""
    named = f"{os.path.realpath(moved)}/.git"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if os.path.realpath(fs.read_text(admin / "gitdir").strip()) == named:
            return
    aside = admin / "gitdir.swarm-tmp"
    aside.write_text(f"{named}\n", encoding="utf-8")
    aside.replace(admin / "gitdir")


def _present(path: Path) -> bool:
    """Whether *path* exists, or cannot be looked at: a directory made unreadable is not gone."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # EACCES: an agent's `chmod 0` of its own worktree
        return True
    return True


def _identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the directory *path*, None when it is gone."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino

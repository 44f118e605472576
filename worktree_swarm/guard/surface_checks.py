"""The guard's checks of git's own files: the repository's executable surface.

``config``, ``config.worktree`` files, ``hooks/``, the ``core.hooksPath`` directory and
``info/`` (see surface.py), setuid or setgid files in the git dir, and a commit graph that
does not match the commits it describes. Changed by an agent, they are put back (tried again
while an agent keeps writing them); changed while none ran, they are the user's: the new
baseline. git's own writes (worktrees made or removed, rerere) are taken as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

from worktree_swarm.core.text import path_text
from worktree_swarm.git import repo as git
from worktree_swarm.git import worktrees
from worktree_swarm.guard import (
    graph,
    hooks_dir,
    known_bytes,
    setuid,
    submodule_dirs,
    surface,
    surface_diff,
    surface_entry,
    surface_kept,
    surface_restore,
)
from worktree_swarm.guard.dir_modes import DirModes
from worktree_swarm.guard.model import REPOSITORY, Violation
from worktree_swarm.guard.object_checks import ObjectChecks
from worktree_swarm.guard.worktree_checks import WorktreeChecks
from worktree_swarm.infra import fs

SETUID_EVERY = 10.0  # seconds between walks of the git dir for setuid files
SURFACE_SAVE_EVERY = 10.0  # seconds: git's copies of config.worktree saved for a resume
# What a read could not look into: a watched directory shut to its owner may hide a change.
NOT_KNOWN = frozenset({surface_entry.UNREACHED, surface_entry.UNREADABLE})


class SurfaceChecks(WorktreeChecks, ObjectChecks):
    """Git's own files, setuid files and the commit graph: scans and put-backs."""

    def _read_surface(
        self, *, afresh: bool = False, stale: set[str] | None = None
    ) -> surface_entry.Surface:
        """Git's files as they are now.

        *afresh*: each file's bytes read anew, none kept by its stat used (in the last scan,
        nothing kept while inotify was quiet either); *stale* gets the paths whose bytes
        changed under the same stat.
        """
        tops = list(self._trees.paths.values())  # a copy: workers add to it meanwhile
        args = (self.repo.common_dir, self._hooks, self._linked, tops, self._dir_modes)
        if not afresh:
            return surface.read(*args)
        if self._closing.is_set() and self._dir_modes is not None:  # events may never come
            self._dir_modes.configs.look_afresh()
        with known_bytes.afresh(stale):
            return surface.read(*args)

    def _take_surface(self) -> None:
        """Git's files as found now for the baseline; the killed manager's kept to judge with."""
        self._hooks = hooks_dir.hooks_paths(self.repo.root, self._linked)
        self._dir_modes = DirModes(stats=self._file_stats)
        self._surface = self._read_surface(afresh=True)
        self._last_surface = surface_kept.load(self._dir)  # see judge_unwatched_surface

    def _being_made(self, common: Path, labels: Sequence[str]) -> set[str]:
        """The labels of *labels* in the admin dir of a worktree being made (or made again).

        Its ``config.worktree`` (git's copy), and its submodules' git dirs (gone with the
        worktree it replaces).
        """
        found = set()
        for label in labels:
            parts = label.split("/")
            if len(parts) < 3 or parts[0] != "worktrees":  # noqa: PLR2004
                continue
            if parts[2] != ("config.worktree" if len(parts) == 3 else "modules"):  # noqa: PLR2004
                continue
            try:
                named = fs.read_text(common / "worktrees" / parts[1] / "gitdir")
            except (OSError, UnicodeDecodeError):
                continue
            if named.strip() in self._provisioning:
                found.add(label)
        return found

    def _not_worktrees_made(
        self, common: Path, now: surface_entry.Surface, labels: Sequence[str]
    ) -> list[str]:
        """*labels* but git's copies of ``config.worktree`` in linked worktrees made or removed.

        Another process's `git worktree add` (a run's new task, a merge's worktree) copies the
        repository's own ``config.worktree`` into the new admin dir, and `git worktree remove`
        takes the file away with its admin dir: neither can make git run anything the user's
        own settings do not. Those are taken into the baseline as they are (saved for a
        resumed guard within :data:`SURFACE_SAVE_EVERY`: it takes them as git's too). The
        user's linked worktrees are not swarm's to make or remove: theirs are judged as ever.
        """
        users = {os.path.realpath(admin) for admin in self._linked.values()}
        left = []
        for label in labels:
            admin = os.path.realpath(common / "/".join(label.split("/")[:2]))
            if admin not in users and surface_diff.worktree_made(common, self._surface, now, label):
                entry = now.get(label)
                if entry is None:
                    self._surface.pop(label, None)
                else:
                    self._surface[label] = entry
                self._surface_owed = True
            else:
                left.append(label)
        return left

    def own_worktree(self, path: Path) -> None:
        """Swarm's worktree *path*, a merge's, is its programs' to work in, submodules too.

        The git dirs of the submodules checked out there (`git submodule update --init` by a
        resolver or a check), in its admin dir's ``modules/``, are taken as found.
        """
        admin = worktrees.linked_admin(self.repo, path)
        if admin is not None:
            with self._repo_lock:
                self._trees.merges.add(admin.name)

    def _not_own_submodules(
        self, now: surface_entry.Surface, labels: Sequence[str], window: tuple[float, float]
    ) -> list[str]:
        """*labels* less those of a task's own submodules written while its agent ran.

        `git submodule update --init` in a task worktree makes each submodule's git dir in
        the worktree's admin dir (``worktrees/<name>/modules/<sub>``), and the agent works in
        it as in the worktree (commits, config): the task's own, taken into the baseline as
        found. Another agent's write there while that task's agent does not run is judged.
        A merge worktree's (:meth:`own_worktree`) are the merge's: always taken as found.
        """
        owners = {admin: task for task, admin in self._trees.admins.items()}
        ran = set(self._agents.suspects(window, exclude=()))
        left = []
        for label in labels:
            parts = label.split("/", 3)
            own = len(parts) == 4 and parts[0] == "worktrees" and parts[2] == "modules"  # noqa: PLR2004
            mine = own and (
                parts[1] in self._trees.merges
                or owners.get(parts[1]) in ran
                or self._merge_beside(parts[1])
            )
            if not (mine and self._take_submodule_file(label, now.get(label))):
                left.append(label)
        return left

    def _merge_beside(self, name: str) -> bool:
        """Whether the admin dir *name* is a `swarm merge`'s worktree beside this run.

        Its resolver's and checks' submodules are that merge's (its own guard judges them);
        known from then on as :meth:`own_worktree` makes it.
        """
        if self._merge_worktree is None:
            return False
        try:
            named = fs.read_text(self.repo.common_dir / "worktrees" / name / "gitdir").strip()
        except (OSError, UnicodeDecodeError):
            return False
        if not self._merge_worktree(Path(os.path.realpath(Path(named).parent))):
            return False
        self._trees.merges.add(name)
        return True

    def _take_submodule_file(self, label: str, new: surface_entry.Entry | None) -> bool:
        """Whether *new* is taken as the baseline of *label*, an own submodule git dir's file.

        Not when it makes git run a program (:mod:`submodule_dirs`): then the baseline is
        what it is to be put back to.
        """
        old = self._surface.get(label)
        root = self.repo.root
        if submodule_dirs.runs_code(root, label, old, new):
            new = submodule_dirs.kept(root, label, old, new)
            taken = False
        else:
            taken = True
        if new is None:
            self._surface.pop(label, None)
        else:
            self._surface[label] = new
        self._surface_dirty = True
        return taken

    def _not_ties_settling(self, labels: list[str]) -> list[str]:
        """*labels* less the ties of your linked worktrees that git moves or removes.

        Those removed or moved whole are followed from the next scan; those your `git worktree
        remove` is removing are judged once it is done.
        """
        common = self.repo.common_dir
        skip = {
            t
            for old, admin, _ in self._gone_linked()
            for t in surface.ties(common, old, admin, held=labels)
        }
        for checkout, admin in list(self._linked.items()):
            ties = surface.ties(common, checkout, admin, held=labels)
            if set(labels) & ties - skip and self._removing(checkout):
                skip |= ties
        return [label for label in labels if label not in skip]

    def _changed_by_others(
        self, now: surface_entry.Surface, window: tuple[float, float]
    ) -> list[str]:
        """The labels changed in *now* but git's own writes and a task's own (the baseline)."""
        common = self.repo.common_dir
        # Owed ones still not back (their writer at it again) were reported: not once a scan.
        labels = [x for x in surface_diff.changed(self._surface, now) if x not in self._unrestored]
        if labels:
            labels = self._not_ties_settling(labels)
        if labels and self._provisioning:  # git's own writes into admin dirs being made
            skip = self._being_made(common, labels)
            labels = [label for label in labels if label not in skip]
        if labels:  # another swarm command's (or git's) worktrees, made or removed meanwhile
            labels = self._not_worktrees_made(common, now, labels)
        if labels and (self._trees.admins or self._trees.merges):
            labels = self._not_own_submodules(now, labels, window)
        if surface.RERERE in labels and surface_diff.rerere_made(
            self.repo.root, self._surface, now
        ):
            labels.remove(surface.RERERE)  # git's own doing, and changes nothing: the baseline
            self._surface[surface.RERERE] = now[surface.RERERE]
            self._surface_dirty = True
        return labels

    def _scan_surface(self, began: float, *, afresh: bool = False) -> list[Violation]:
        """Git's files compared with the baseline; the baseline kept for a resume if changed.

        *afresh*: each file read anew (after an attempt, before its checkpoint runs git).
        """
        try:
            return self._compare_surface(began, afresh=afresh)
        finally:
            self._keep_surface()

    def _keep_surface(self) -> None:
        """Save the baseline for a resuming manager when it changed since last saved.

        Not saved, a killed manager's successor would judge what this one took (a task's
        own submodule checked out while its agent ran) as an outside write, and delete it.
        git's copies of your ``config.worktree`` (one per worktree made, in a repository
        with one), which the successor takes as git's too, are saved with the next other
        change, at most :data:`SURFACE_SAVE_EVERY` later, and in the last scan.
        """
        now = time.monotonic()
        owed = self._surface_owed and (self._closing.is_set() or now >= self._surface_due)
        if (self._surface_dirty or owed) and self._resumable:
            surface_kept.save(self._dir, self._surface)
            self._surface_due = now + SURFACE_SAVE_EVERY
        if self._surface_dirty or owed:
            self._surface_owed = False
        self._surface_dirty = False

    def _compare_surface(self, began: float, *, afresh: bool = False) -> list[Violation]:
        common = self.repo.common_dir
        swapped = self._swapped_store(began)  # first: the surface's objects/info is in it
        self._put_back_again()
        last = self._closing.is_set()
        stale: set[str] = set()
        now = self._read_surface(afresh=afresh or last, stale=stale if last else None)
        unseen = {surface_entry.label_of(common, path) for path in stale}
        now = self._reach(now, (self._surface_checked, began))
        window = (self._surface_checked, began)
        labels = self._changed_by_others(now, window)
        if not labels:
            self._surface_checked = began
            return swapped
        self._changes.mark_all()  # `info/exclude` or the config may change what git sees
        # Written with no new stat (through a shared map, into a page it wrote before): at any
        # time since the file was last read, by an agent that may have ended since. Only
        # those: the others changed within the window as ever (the user's, while none ran).
        spans = [
            ([x for x in labels if x in unseen], (0.0, began)),
            ([x for x in labels if x not in unseen], window),
        ]
        if spans[0][0]:
            self._log(
                f"git's files changed under the same stat (a write through a shared map):"
                f" {', '.join(spans[0][0])}; judged by the agents alive since last read"
            )
        blamed, yours = [], []
        for group, span in spans:
            suspects = self._agents.suspects(span, exclude=()) if group else ()
            suspects = self._agents.narrow(suspects, common, group) or suspects
            if suspects:
                blamed.append((group, suspects))
            else:
                yours += group
        if blamed and yours and self.restore:
            self._adopt_labels(now, yours)  # the user's beside an agent's: before it is undone
        judged = {x for group, _ in blamed for x in group}
        found = [self._undo_surface(g, now, s, began, judged - set(g)) for g, s in blamed]
        if not blamed or not self.restore:
            # Nobody of ours was running: the user changed it. Take it as the new baseline
            # (but what an agent's put-back is owed: it is tried again). Or recorded and left
            # as it is (`allow_outside_writes`): the new baseline, so that it is recorded once.
            self._adopt_surface(now)
            self._hooks = hooks_dir.hooks_paths(self.repo.root, self._linked)
            self._surface_checked = began
        return [*swapped, *found]

    def _undo_surface(
        self,
        labels: list[str],
        now: surface_entry.Surface,
        suspects: tuple[str, ...],
        began: float,
        others: set[str] | None = None,
    ) -> Violation:
        """*labels* of git's files, changed by *suspects*: recorded, put back (if restoring).

        *others*: labels of the same scan put back with other suspects (not this one's).
        """
        common = self.repo.common_dir
        patch = surface_diff.patch(common, self._surface, now, labels)
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
                surface_restore.put_back(common, self._surface, back, now)
            restored = not set(surface_diff.changed(self._surface, self._read_surface())) - (
                others or set()
            )
            if restored:
                self._surface_checked = time.time()
            else:  # an agent writing it again meanwhile, say: tried again by every scan (but
                # `alternates`, put back only once a repack took in the objects it may hold)
                left = set(back) - set(surface.ALTERNATES)
                self._unrestored |= left & set(
                    surface_diff.changed(self._surface, self._read_surface())
                )
        else:  # recorded and left as it is (`allow_outside_writes`): the new baseline, so
            # that it is recorded once
            self._adopt_labels(now, labels)
            self._surface_checked = began
        return self._record(dataclasses.replace(found, restored=restored), patch_text=patch)

    def _scan_setuid(self, began: float) -> list[Violation]:
        """A setuid or setgid file new in the git dir: its bits taken off (the file kept).

        A copy of a shell made setuid there (an agent running as root, or a setgid one of your
        group) would give anyone who finds it your rights. A walk of the whole git dir, its
        cost growing with its refs, reflogs and loose objects: every :data:`SETUID_EVERY`
        and in the last scan, not after each attempt (nothing of it runs with swarm's git).
        """
        common = self.repo.common_dir
        now = setuid.setuid_files(common)
        labels = sorted(k for k, bits in now.items() if bits & ~self._setuid.get(k, 0))
        window = (self._setuid_checked, began)
        suspects = self._agents.suspects(window, exclude=()) if labels else ()
        suspects = self._agents.narrow(suspects, common, labels) or suspects
        if not suspects:  # none, or the user's own: the new baseline
            self._setuid, self._setuid_checked = now, began
            return []
        patch = f"# setuid or setgid files made in {path_text(str(common))}\n" + "".join(
            f"# {path_text(label)}: mode {now[label]:o}: its setuid and setgid bits taken off\n"
            for label in labels
        )
        found = Violation(number=0, where=REPOSITORY, git_files=tuple(labels), suspects=suspects)
        restored = False
        if self.restore:
            found = self._intend(found, patch)
            with contextlib.suppress(OSError):  # not restored is recorded as such
                setuid.disarm(common, labels)
            left = setuid.setuid_files(common)
            restored = not any(left.get(k, 0) & ~self._setuid.get(k, 0) for k in labels)
        self._setuid_checked = began
        return [self._record(dataclasses.replace(found, restored=restored), patch_text=patch)]

    def _reach(
        self, now: surface_entry.Surface, window: tuple[float, float]
    ) -> surface_entry.Surface:
        """*now* with what lies behind the watched directories an agent shut to their owner.

        Their bits are put back first (as the put-back after it would), then what they hold
        is read: a `core.fsmonitor` planted behind a shut `objects/` is compared as usual.
        """
        if not self.restore or all(e.kind not in NOT_KNOWN for e in now.values()):
            return now
        common = self.repo.common_dir
        shut = [
            label for label in surface_diff.changed(self._surface, now)
            if (old := self._surface.get(label)) is not None
            and old.kind in {surface_entry.MODE, "dir"}
        ]  # fmt: skip
        if not shut or not self._agents.suspects(window, exclude=()):
            return now  # the user's own: its bits are the new baseline
        with contextlib.suppress(OSError):  # what stays shut stays not known
            surface_restore.put_back(common, self._surface, shut, now)
        reached = self._read_surface()
        for label in shut:  # still changed as found, to be reported and put back as usual
            if label in now:
                reached[label] = now[label]
            else:
                reached.pop(label, None)
        return reached

    def _put_back_again(self) -> None:
        """Put back the git files an earlier put-back could not (their agent wrote them again).

        The baseline stays as it was until they are: taken as found, a planted `core.fsmonitor`
        would run with your next `git status` once the run ended.
        """
        if not self._unrestored or not self.restore:
            return
        with contextlib.suppress(OSError):
            now = self._read_surface()
            surface_restore.put_back(
                self.repo.common_dir, self._surface, sorted(self._unrestored), now
            )
        self._unrestored &= set(surface_diff.changed(self._surface, self._read_surface()))

    def _adopt_surface(self, now: surface_entry.Surface) -> None:
        """Take *now* as the git files' baseline, but for those a put-back is still owed."""
        owed = {label: self._surface.get(label) for label in self._unrestored}
        owed |= {  # not known now: as it was last seen
            label: self._surface.get(label)
            for label, entry in now.items()
            if entry.kind == surface_entry.UNREACHED
        }
        self._surface = dict(now)
        for label, entry in owed.items():
            if entry is None:
                self._surface.pop(label, None)
            else:
                self._surface[label] = entry
        self._surface_dirty = True  # saved at the end of the scan (or of the next one)

    def _adopt_labels(self, now: surface_entry.Surface, labels: Sequence[str]) -> None:
        """Take *labels* of *now* into the baseline (the user's), but those not known now."""
        for label in labels:
            entry = now.get(label)
            if entry is None:
                self._surface.pop(label, None)
            elif entry.kind != surface_entry.UNREACHED:
                self._surface[label] = entry
        self._hooks = hooks_dir.hooks_paths(self.repo.root, self._linked)
        self._surface_dirty = True

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
        # git showed your checkouts' HEAD through it
        self._graph, found = self._drop_lying(
            window,
            label=graph.LABEL,
            drop=lambda: graph.remove(common),
            read=lambda: graph.fingerprint(common),
            said=f"git commit-graph verify:\n{wrong}\n",
        )
        return found

"""The guard's checks of git's indexes of objects: packs, reverse indexes, multi-pack-index.

One that appeared or changed during the run and lies about the objects it holds (git
verify-pack, git multi-pack-index verify) is removed, and told if an agent of ours was
running; a new pack that lies while none ran is left alone (damage of another kind, the pack
perhaps yours), and a pack of yours written in place, which the guard's hold on it is too,
can only be reported. A commit graph that lies is removed the same way (surface_checks.py).
The checks themselves are in packfiles.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from worktree_swarm.guard import graph, packfiles
from worktree_swarm.guard.model import REPOSITORY, Violation
from worktree_swarm.guard.objects import ObjectWatch
from worktree_swarm.guard.verdicts import Verdicts


class PackChecks(Verdicts):
    """Packs, reverse indexes and the multi-pack-index that lie: scans and removals."""

    def _new_packs(self, window: tuple[float, float]) -> list[Violation]:
        """Packs that appeared since and whose index lies about their objects: removed."""
        common = self.repo.common_dir
        now = packfiles.packs(common)
        new = sorted(now - self._packs)
        self._packs_verified = set(new)  # as they are now: not checked again by this scan
        lies = {}
        unsure = set()  # its check was killed: checked again at the next scan
        for name in new:
            if self._objects is not None:  # first: a write after the check below is seen
                self._objects.watch_pack(common / "objects" / "pack" / name)
            why = packfiles.lying_pack(self.repo.root, common / "objects" / "pack" / name)
            if why is None:
                unsure.add(name)
            elif why:
                lies[name] = why
        self._rev_check |= set(new) - set(lies)
        # A pack checked again (its first check was killed: by the OOM killer, or by the agent
        # that planted it) is judged from when it first appeared: its agent may have ended since.
        since = min((self._unsure_since.get(name, window[0]) for name in lies), default=window[0])
        self._unsure_since = {name: self._unsure_since.get(name, window[0]) for name in unsure}
        # No agent of ours was running: damage of another kind (or a check that failed for
        # want of memory), not an attack, and the pack may well be yours: left alone.
        suspects = (
            self._agents.suspects((min(since, window[0]), window[1]), exclude=()) if lies else ()
        )
        self._drop_packs(lies if suspects else ())
        # Those checked (and those known before) still there: not one that came meanwhile.
        self._packs = ((self._packs | now) - unsure) & packfiles.packs(common)
        listed = "".join(f"objects/pack/{name}: {why}\n" for name, why in lies.items())
        return self._lying_packs(lies, suspects, f"git verify-pack:\n{listed}")

    def _drop_packs(self, names: Iterable[str]) -> None:
        """Move the packs *names* (by index) aside, unless outside writes are allowed."""
        if not self.restore:
            return
        for name in names:
            with contextlib.suppress(OSError):  # not removed is recorded as such
                packfiles.drop_pack(
                    self.repo.common_dir / "objects" / "pack" / name, self._dir / packfiles.DROPPED
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
        self._packs = packfiles.packs(common)
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
            if packfiles.replaced_held(idx, self._held / "pack" / name):
                continue  # another file under the name of yours: put back as written over
            objects.watch_pack(idx)  # the files now there: first, as for a new pack
            why: str | None = ""
            if {f"{stem}.pack", name} & written:
                why = packfiles.lying_pack(self.repo.root, idx)
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
            why = packfiles.lying_rev(common / "objects" / "pack" / name)
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

    def _scan_midx(self, window: tuple[float, float]) -> list[Violation]:
        """A multi-pack-index that changed and lies about where objects are: removed."""
        common = self.repo.common_dir
        now = packfiles.midx_print(common)
        if now == self._midx:
            return []
        wrong = packfiles.lying_midx(self.repo.root)
        if wrong and packfiles.midx_print(common) != now:
            return []  # rewritten or removed while it was verified (a repack): next scan
        if not wrong:  # git's own (`git multi-pack-index write`, a repack that writes one)
            self._midx = now
            return []
        # git showed your checkouts' files through it
        self._midx, found = self._drop_lying(
            window,
            label=packfiles.MIDX,
            drop=lambda: packfiles.drop_midx(common),
            read=lambda: packfiles.midx_print(common),
            said=f"git multi-pack-index verify:\n{wrong}\n",
        )
        return found

    def _drop_lying(
        self,
        window: tuple[float, float],
        *,
        label: str,
        drop: Callable[[], object],
        read: Callable[[], graph.Fingerprint],
        said: str,
    ) -> tuple[graph.Fingerprint, list[Violation]]:
        """A git index of objects (*label*) that lies: removed, and its suspects' violation.

        Every checkout is compared again (git showed them through it). Returns the index's
        files as *read* after the removal (none: it was removed), and the violation, if an agent
        of ours was running (else damage of another kind, not an attack).
        """
        self._changes.mark_all()
        if self.restore:
            with contextlib.suppress(OSError):  # not removed is recorded as such
                drop()
        now = read()
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:
            return now, []
        violation = Violation(
            number=0, where=REPOSITORY, git_files=(label,), suspects=suspects, restored=not now
        )
        return now, [self._record(violation, patch_text=said)]

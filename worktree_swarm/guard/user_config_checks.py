"""The run guard's check of your global and system git config: what appeared there meanwhile.

Your user-level config lies outside the repository and is not put back (nor is the rest of
your home). swarm's own git honours what it held when the run began
(:mod:`worktree_swarm.git.user_config`); a program-running setting that appears or changes
there later is neutralised in swarm's git whoever wrote it. This check tells whose it was: one
written while an agent ran is that agent's violation (recorded, its task failed unless outside
writes are allowed) and stays untrusted by later runs while it is there; one written while
none ran is yours, trusted from then on. The run's record of what it trusts is swarm's own: one
written or deleted by anyone else is written back, whatever ``allow_outside_writes`` says, and
is the violation of the agents alive meanwhile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from worktree_swarm.core.paths import STATE_DIR_NAME
from worktree_swarm.core.text import path_text
from worktree_swarm.git import user_config
from worktree_swarm.git.config_overrides import judged
from worktree_swarm.guard.model import REPOSITORY, Violation
from worktree_swarm.guard.verdicts import Verdicts
from worktree_swarm.infra import fs


@dataclasses.dataclass(slots=True)
class _Watch:
    checked: float  # when the last check began (time.time)
    key: tuple[object, ...] | None = None  # the files' stats as last judged
    reported: set[str] = dataclasses.field(default_factory=set)  # digests already told
    record_checked: float = 0.0  # when the record was last found as written
    home: tuple[int, int] | None = None  # the state dir's (device, inode) then


class UserConfigChecks(Verdicts):
    """Program-running settings new in your user-level git config since the run began."""

    _user_watch: _Watch | None = None

    def watch_user_config(self, run_id: str, began: float) -> None:
        """Trust your user-level config as it is now (a resumed run: as its start found it).

        The run's guard only (a merge's guard does not): called before :meth:`start`, so that
        the baselines' own git commands already honour your settings.
        """
        key = user_config.files_key()  # before reading: a later write is judged
        read = user_config.begin_run(self.repo.root, self.repo.state_dir, run_id, kept=judged)
        # A resumed run judges what changed while no manager watched at its first scan.
        home = fs.identity(self.repo.state_dir)
        self._user_watch = _Watch(began, key if read else None, record_checked=began, home=home)

    def _scan_user_config(self, began: float) -> list[Violation]:
        """New untrusted settings: the agents alive meanwhile blamed, or taken as yours.

        A stat of the files while they stay as they were; one `git config` when they change.
        """
        watch = self._user_watch
        if watch is None:
            return []
        told = self._check_record(watch, began)
        key = user_config.files_key()  # before reading: a later write is seen next time
        if key == watch.key:
            return told
        new = self._untrusted(watch.reported)
        window = (watch.checked, began)
        watch.key, watch.checked = key, began
        if not new:
            return told
        suspects = self._agents.suspects(window, exclude=())
        if not suspects:  # yours, made while no agent ran: trusted from now on
            user_config.adopt(self.repo.state_dir, new)
            return told
        watch.reported.update(new)
        return [*told, self._blame_user_config(new, suspects, "during the run")]

    def judge_user_config_unwatched(self, suspects: Collection[str]) -> list[Violation]:
        """A run whose manager died, ended without one (`swarm stop`, `swarm run --force`).

        A program-running setting in your user-level config that the run's record neither
        trusts nor names as planted already appeared while no manager watched: the violation of
        *suspects* (the tasks whose agents outlived it), untrusted by later runs while it is
        there; with none, yours (a change made after a reboot), trusted from now on.
        Returned with the rest of what the guard found, for the caller to record and apply.
        """
        new = self._untrusted(user_config.recorded_planted(self.repo.state_dir))
        if new and suspects:
            self._blame_user_config(new, tuple(sorted(suspects)), "while no manager watched")
        elif new:
            user_config.adopt(self.repo.state_dir, new)
        return self.drain()

    def judge_user_config_resumed(self, suspects: Collection[str]) -> None:
        """A resumed run, before its tasks' wind-up: what appeared while no manager watched.

        Judged as `swarm stop` judges it (:meth:`judge_user_config_unwatched`): the violation
        of *suspects* (drained by the run), or yours with none. Not judged again at the first scan.
        """
        watch = self._user_watch
        if watch is None or watch.key is not None:  # a new run: it trusts what it found
            return
        watch.key = user_config.files_key()  # before reading: a later write is judged
        new = self._untrusted(user_config.recorded_planted(self.repo.state_dir))
        if new and suspects:
            watch.reported.update(new)
            self._blame_user_config(new, tuple(sorted(suspects)), "while no manager watched")
        elif new:
            user_config.adopt(self.repo.state_dir, new)

    def _untrusted(self, told: Collection[str]) -> dict[str, str]:
        """Program-running user-level settings untrusted and not in *told*: digest -> label."""
        new: dict[str, str] = {}  # digest -> "file: name"
        for entry in user_config.user_entries(self.repo.root):
            if not judged(entry.name, entry.value):
                continue
            found = user_config.digest(entry.name, entry.value)
            state = self.repo.state_dir
            if found not in told and not user_config.trusted(state, *entry[2:]):
                new[found] = f"{path_text(entry.origin)}: {entry.name}"
        return new

    def _blame_user_config(
        self, new: dict[str, str], suspects: tuple[str, ...], when: str
    ) -> Violation:
        """Record *new* (:meth:`_untrusted`) as planted, the violation of *suspects*."""
        user_config.planted(self.repo.state_dir, new)
        labels = tuple(sorted(set(new.values())))
        patch = (
            f"# settings that run a program, new in your user-level git config {when};"
            " swarm's own git never runs them, your own git does until you remove them\n"
        ) + "".join(f"# {label}\n" for label in labels)
        found_here = Violation(number=0, where=REPOSITORY, git_files=labels, suspects=suspects)
        return self._record(found_here, patch_text=patch)

    def _check_record(self, watch: _Watch, began: float) -> list[Violation]:
        """The run's record of your config written back if another wrote or deleted it.

        Read whole each scan (a few digests). Gone with the whole state directory (which the
        manager writes back, saying so), or changed while no agent ran, it is only logged.
        """
        state = self.repo.state_dir
        label = f"{STATE_DIR_NAME}/{user_config.RECORD}"
        window, home = (watch.record_checked, began), watch.home
        try:
            put_back = user_config.put_back(state)
        except OSError as exc:  # judged once it is written back: its suspects since
            self._part_failed(REPOSITORY, f"{label} could not be written back: {exc}")
            return []
        watch.record_checked, watch.home = began, fs.identity(state)
        if not put_back:
            return []
        suspects = self._agents.suspects(window, exclude=()) if home == watch.home else ()
        if not suspects:
            self._log(f"{label}, the record of your trusted global config, changed: written back")
            return []
        patch = (
            f"# {label}: swarm's record of what your global and system git config held when the"
            " run began, written or deleted during the run; written back as swarm wrote it\n"
        )
        found = Violation(
            number=0, where=REPOSITORY, git_files=(label,), suspects=suspects, restored=True
        )
        return [self._record(found, patch_text=patch)]

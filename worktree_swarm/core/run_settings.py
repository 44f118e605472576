"""The run-wide settings stored with a run, the choices they take, and RunSpec (plus tasks)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from worktree_swarm.core.settings import Flag, Kind, Scope, setting, settings_of
from worktree_swarm.core.task import Task

DEFAULT_COMMIT_AUTHOR = "worktree-swarm <swarm@localhost>"
# GitHub refuses a push holding a file over 100 MiB: by default no checkpoint commits one.
DEFAULT_MAX_FILE = 100 << 20


class Executor(enum.StrEnum):
    """Where agents run."""

    LOCAL = "local"  # worktrees of this repository, agents on this machine
    RAY = "ray"  # per-node clones on a Ray cluster (run/ray_exec.py)


class CopyMode(enum.StrEnum):
    """How `copy` files reach a worktree."""

    AUTO = "auto"  # a copy-on-write clone where the filesystem can, else a byte copy
    HARDLINK = "hardlink"
    COPY = "copy"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """The run-wide settings: stored with the run, read back by every later command."""

    jobs: int = setting(
        4,
        kind=Kind.INT,
        scope=Scope.RUN,
        minimum=1,
        flag=Flag(name="--jobs", short="-j", help="Agents running at once."),
        doc="agents running at once",
    )
    worktree_root: Path | None = setting(
        None,
        kind=Kind.PATH,
        scope=Scope.RUN,
        flag=None,
        default_doc="`<repo parent>/<repo name>.swarm`",
        doc="where worktrees go; relative to the repository root; outside the checkout and its "
        "git directory, not a system or home directory (`/tmp`, `/var/tmp` and `/dev/shm` "
        "themselves included: name a directory of its own), no character in it that does not "
        "print (a control character, a blank other than the space), and a directory can be "
        "made there (checked by making and removing one: root passes access "
        "checks `/proc` refuses)",
    )
    commit_author: str = setting(
        DEFAULT_COMMIT_AUTHOR,
        kind=Kind.AUTHOR,
        scope=Scope.RUN,
        flag=None,
        default_doc="your identity as git takes it: `GIT_AUTHOR_NAME` / `GIT_AUTHOR_EMAIL`, "
        f"else `user.name` / `user.email` from git config (else `{DEFAULT_COMMIT_AUTHOR}`)",
        doc="the author of checkpoint and merge commits; each checkpoint also carries the "
        "trailers `Swarm-Task`, `Swarm-Attempt`, `Swarm-Agent` (the agent that ran that attempt: "
        "a fallback names itself)",
    )
    port_base: int = setting(
        20000,
        kind=Kind.INT,
        scope=Scope.RUN,
        minimum=1024,
        maximum=65535,
        flag=None,
        doc="first port handed out in `SWARM_PORT`",
    )
    port_block: int = setting(
        10,
        kind=Kind.INT,
        scope=Scope.RUN,
        minimum=1,
        flag=None,
        doc=(
            "ports reserved per task in flight (up to 2 x jobs of them: `port_base` + 2 x jobs"
            " x block must stay under 65536), apart from other runs' too ([ports](#ports))"
        ),
    )
    kill_grace: float = setting(
        5.0,
        kind=Kind.DURATION,
        scope=Scope.RUN,
        flag=None,
        doc="time between SIGTERM and SIGKILL when stopping an agent, setup step or check (the "
        "whole tree: [processes.md](processes.md))",
    )
    max_cost_usd: float | None = setting(
        None,
        kind=Kind.NUMBER,
        scope=Scope.RUN,
        flag=Flag(name="--max-cost-usd", help="Start no new attempt once the run cost this."),
        doc="no new attempt once the run has cost this much",
    )
    budget_share: float = setting(
        0.8,
        kind=Kind.SHARE,
        scope=Scope.RUN,
        flag=None,
        doc="share of `max_cost_usd` after which new attempts use the task's `budget_agent`",
    )
    rate_limit_backoff: float = setting(
        30.0,
        kind=Kind.DURATION,
        scope=Scope.RUN,
        flag=None,
        doc="base of the rate-limit pacing: launches of a throttled provider are spaced by this "
        "over `jobs`, and once it is down to one agent, by an exponential backoff with jitter "
        "from this base; a task throttled with nothing done waits before its next attempt for a "
        "backoff of its own from this base, doubling with each such throttle in a row, up to 15 "
        "minutes "
        "([agents.md](agents.md#providers-fallback-and-budget-agents))",
    )
    max_disk: int | None = setting(
        None,
        kind=Kind.SIZE,
        scope=Scope.RUN,
        flag=Flag(
            name="--max-disk", metavar="SIZE", help="Cap on the worktrees' disk use, e.g. 20G."
        ),
        doc='cap on what the worktrees use (`"20G"`, `"1.5G"`, whole bytes; binary units): no new '
        "worktree while it would be exceeded, tasks wait, finished worktrees are removed for "
        "room ([disk.md](disk.md))",
    )
    max_log: int = setting(
        1 << 30,
        kind=Kind.SIZE,
        scope=Scope.RUN,
        flag=None,
        default_doc='`"1G"`',
        doc="cap on what one attempt of an agent prints (its log under `.git/swarm`), and one "
        "`setup` or check step of a run (not `swarm merge`'s): past it, it is stopped and its "
        "task fails, its work kept; a "
        "runaway printing in a loop would fill the disk ([recovery.md](recovery.md#a-full-disk))",
    )
    max_file: int = setting(
        DEFAULT_MAX_FILE,
        kind=Kind.SIZE,
        scope=Scope.RUN,
        flag=None,
        default_doc='`"100M"`',
        doc="cap on one file of a task's branch: a checkpoint leaves a bigger file out of its "
        "commit (it stays in the worktree) and the task fails, as it does when the agent "
        "committed one itself; GitHub refuses a push holding a file over 100 MiB "
        "([recovery.md](recovery.md#a-file-too-big-for-the-branch))",
    )
    copy_mode: CopyMode = setting(
        CopyMode.AUTO,
        kind=Kind.CHOICE,
        scope=Scope.RUN,
        flag=None,
        doc="how `copy` files get into worktrees: `auto` (reflink clone, else copy), `hardlink` "
        "(shares the file with your checkout), `copy` "
        "([disk.md](disk.md#copy_mode-how-copy-files-get-into-a-worktree))",
    )
    sandbox: bool = setting(
        False,  # noqa: FBT003 - a field default, not a flag argument
        kind=Kind.BOOL,
        scope=Scope.RUN,
        flag=Flag(
            name="--sandbox",
            negatable=True,
            help="Run agents under bubblewrap, writable only in their worktree (Linux).",
        ),
        doc="run each agent under bubblewrap, writable only in its worktree, the git common "
        "dir, its temp and config dirs (Linux; [sandbox.md](sandbox.md))",
    )
    sandbox_writable: tuple[str, ...] = setting(
        (),
        kind=Kind.PATHS,
        scope=Scope.RUN,
        flag=None,
        doc="extra paths a sandboxed agent may write (absolute or `~/...`; missing ones are "
        'skipped, one you cannot reach is bad input), e.g. `["~/.cache"]`',
    )
    allow_outside_writes: bool = setting(
        False,  # noqa: FBT003 - a field default, not a flag argument
        kind=Kind.BOOL,
        scope=Scope.RUN,
        flag=Flag(
            name="--allow-outside-writes",
            help="Report writes outside a task's worktree but do not fail it or restore.",
        ),
        doc="report writes outside a task's worktree but neither undo them nor fail the task "
        "([guard.md](guard.md))",
    )
    executor: Executor = setting(
        Executor.LOCAL,
        kind=Kind.CHOICE,
        scope=Scope.RUN,
        flag=Flag(
            name="--executor",
            help="Where agents run: this machine (default) or a Ray cluster (docs/cluster.md).",
        ),
        doc="where agents run: `local` (worktrees on this machine) or `ray` (per-node clones on "
        "a Ray cluster, [cluster.md](cluster.md))",
    )
    ray_address: str = setting(
        "",
        kind=Kind.ADDRESS,
        scope=Scope.RUN,
        flag=Flag(
            name="--ray-address", metavar="ADDR", help="The Ray cluster (default: RAY_ADDRESS)."
        ),
        default_doc="`RAY_ADDRESS`, else a cluster on this machine",
        doc='the Ray cluster to run on (`executor = "ray"`)',
    )
    remote: str = setting(
        "origin",
        kind=Kind.REMOTE,
        scope=Scope.RUN,
        flag=Flag(name="--remote", metavar="NAME", help="The remote the nodes share."),
        doc="the remote (name or URL) every node clones from and pushes checkpoints to "
        '(`executor = "ray"`)',
    )
    ray_memory: int = setting(
        2 * 2**30,
        kind=Kind.SIZE,
        scope=Scope.RUN,
        flag=None,
        default_doc='`"2G"`',
        doc='memory each task\'s actor asks Ray for (`executor = "ray"`)',
    )
    checkpoint_interval: float = setting(
        60.0,
        kind=Kind.DURATION,
        scope=Scope.RUN,
        flag=None,
        doc='time between checkpoint pushes while an agent runs (`executor = "ray"`)',
    )
    lost_after: float = setting(
        60.0,
        kind=Kind.DURATION,
        scope=Scope.RUN,
        flag=None,
        doc="how long an attempt's actor may go without answering before the attempt counts as "
        "lost: its actor is killed and the task goes on elsewhere from its last pushed "
        "checkpoint; and the cluster's head, before the run is interrupted "
        '(`executor = "ray"`, [cluster.md](cluster.md#commands))',
    )

    def to_json(self) -> str:
        """The settings as stored in the run's row."""
        data: dict[str, object] = {}
        for f in fields(RunSettings):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> RunSettings:
        """Read stored settings; unknown keys are ignored, missing ones take their default."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        kinds = {entry.key: entry for entry in settings_of(RunSettings)}
        values: dict[str, object] = {}
        for f in fields(RunSettings):
            if f.name not in data or data[f.name] is None:
                continue
            value = data[f.name]
            entry = kinds.get(f.name)
            if entry is not None and entry.kind is Kind.PATH:
                # Runs stored before this class wrote a missing root as the string "None".
                if value == "None":
                    continue
                value = Path(str(value))
            elif entry is not None and entry.choices is not None:
                value = entry.choices(str(value))
            elif isinstance(value, list):
                value = _tuples(value)
            values[f.name] = value
        return cls(**values)  # type: ignore[arg-type]

    @property
    def settings(self) -> RunSettings:
        """Only the run-wide settings (a RunSpec without its tasks)."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})


def _tuples(value: object) -> object:
    """JSON arrays back to the (possibly nested) tuples settings hold."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec(RunSettings):
    """A validated batch of tasks plus the run-wide settings."""

    tasks: tuple[Task, ...]
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: RunSettings, tasks: tuple[Task, ...]) -> RunSpec:
        """A spec of *tasks* under *settings* (e.g. read back from the store)."""
        return cls(tasks=tasks, **{f.name: getattr(settings, f.name) for f in fields(RunSettings)})

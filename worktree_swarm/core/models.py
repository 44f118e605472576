"""Frozen records and enums shared by every layer: tasks, states, attempts."""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeAlias

from worktree_swarm.core.settings import Flag, Kind, Scope, setting, settings_of

# A run's event sink: (kind, task id or None, data). The store records what it is given and the
# views (live table, JSON lines) show it.
Emit: TypeAlias = Callable[[str, str | None, Mapping[str, object]], None]

TASK_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
BRANCH_PREFIX = "swarm/"
# The branch `swarm merge` merges a run into (with the run id after it).
INTEGRATION_PREFIX = "swarm/integration-"
# The temporary worktree a `swarm merge --into` merges in, under the worktree root (no task
# id starts with "_"): nothing in it is anyone's work once that merge is over or killed.
SCRATCH_PREFIX = "_merge-"
# The integration worktree of a run, under the worktree root (with the run id after it).
INTEGRATION_DIR_PREFIX = "_integration-"
# A task's merge result while `swarm merge` runs checks on its merge: an intent, undone by the
# next merge when that one was killed.
MERGE_CHECKING = "checking"
DEFAULT_COMMIT_AUTHOR = "worktree-swarm <swarm@localhost>"
# GitHub refuses a push holding a file over 100 MiB: by default no checkpoint commits one.
DEFAULT_MAX_FILE = 100 << 20
DEFAULT_RETRIES = 5  # rate-limited attempts resumed per agent before giving up
DEFAULT_MAX_WAIT = 4 * 3600.0  # seconds
DEFAULT_AGENT = "claude"


def is_valid_task_id(task_id: str) -> bool:
    """Return whether *task_id* is safe as a path component and a ref name part."""
    # ".." and ".lock" are legal for the regex but not for git ref names; a task's branch
    # named like `swarm merge`'s integration branches would count as a merge target.
    return (
        TASK_ID_RE.fullmatch(task_id) is not None
        and ".." not in task_id
        and not task_id.endswith((".lock", "."))
        and not (BRANCH_PREFIX + task_id).startswith(INTEGRATION_PREFIX)
    )


def merge_again(target: str | None, task_id: str = "") -> str:
    """The `swarm merge` that merges into *target* (a run's integration branch, or ``--into``)."""
    into = f" --into {target}" if target and not target.startswith(INTEGRATION_PREFIX) else ""
    return f"swarm merge{into}{' ' + task_id if task_id else ''}"


# The limit of a setup step, a check and a conflict resolver when none is set (30 minutes).
STEP_TIMEOUT = 30 * 60.0


class TaskState(enum.StrEnum):
    """Lifecycle of a task (docs/cli.md lists the states)."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    RATE_LIMITED = "rate_limited"
    CHECKING = "checking"
    DONE = "done"
    FAILED = "failed"
    NO_CHANGES = "no_changes"
    TIMED_OUT = "timed_out"
    STOPPED = "stopped"

    @property
    def is_active(self) -> bool:
        """Whether the task is still in play: pending, running, checking or rate limited."""
        return self in _ACTIVE

    @property
    def is_final(self) -> bool:
        """Whether nothing more will happen to the task in this run."""
        return not self.is_active

    @property
    def is_success(self) -> bool:
        """Whether the task delivered work."""
        return self is TaskState.DONE


_ACTIVE = frozenset(
    {TaskState.PENDING, TaskState.RUNNING, TaskState.RATE_LIMITED, TaskState.CHECKING}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One unit of work: a prompt for an agent in its own worktree and branch.

    ``agent`` is either a profile name (``agent_argv`` empty) or resolved to an argv
    template in ``agent_argv``; placeholders are substituted inside single arguments.
    Checks and setup steps are argv lists: no shell ever runs them.
    """

    id: str = setting(
        kind=Kind.TEXT,
        scope=Scope.TASK_ONLY,
        flag=None,
        doc="`[a-z0-9][a-z0-9._-]{0,62}`, no `..`, not ending in `.` or `.lock`, not starting "
        "with `integration-` (`swarm merge`'s branches are `swarm/integration-<run>`), not "
        "`guard`, `merge`, `findings.md`, `manager.log` or `paused.json` (swarm's own files in a "
        "run's directory, beside one directory per task); names the branch `swarm/<id>` and the "
        "worktree directory; unique in the run",
    )
    prompt: str = setting(
        kind=Kind.TEXT,
        scope=Scope.TASK_ONLY,
        flag=None,
        doc="the task text, passed to the agent unchanged; never seen by a shell",
    )
    title: str = setting(
        "",
        kind=Kind.TEXT,
        scope=Scope.TASK_ONLY,
        flag=None,
        doc="a short label: the title of its pull request and of its row in "
        "`swarm report --html` and `--json`",
    )
    depends_on: tuple[str, ...] = setting(
        (),
        kind=Kind.IDS,
        scope=Scope.TASK_ONLY,
        flag=None,
        doc="tasks that must finish first; unknown ids, self-dependencies and cycles are errors",
    )
    agent: str = setting(
        "command",
        kind=Kind.AGENT,
        scope=Scope.PER_TASK,
        user_default=DEFAULT_AGENT,
        flag=Flag(
            name="--agent",
            help="Agent profile (claude, codex, aider, gemini, scripted) or a command line.",
        ),
        doc="a profile (`claude`, `codex`, `aider`, `gemini`, `scripted`) or an argv array",
    )
    agent_argv: tuple[str, ...] = ()  # the resolved `agent`
    checks: tuple[tuple[str, ...], ...] = setting(
        (),
        kind=Kind.COMMANDS,
        scope=Scope.PER_TASK,
        flag=Flag(name="--check", metavar="CMD", help="A check run after the agent."),
        doc="commands run in the worktree after the agent exits; all must pass",
    )
    files: tuple[str, ...] = setting(
        (),
        kind=Kind.GLOBS,
        scope=Scope.TASK_ONLY,
        flag=None,
        doc="what the task expects to touch; overlapping tasks are not run together",
    )
    sparse: bool = setting(
        False,  # noqa: FBT003 - a field default, not a flag argument
        kind=Kind.BOOL,
        scope=Scope.PER_TASK,
        flag=Flag(
            name="--sparse",
            negatable=True,
            help="Check out only the directories a task's `files` name (git's sparse cone).",
        ),
        doc="check out only what `files` names: the directories its globs cover, the files "
        "directly inside their parents and the top level (git's sparse cone); the agent and "
        "the checks see nothing else; no effect without `files` "
        "([disk.md](disk.md#sparse-check-out-only-what-a-task-touches))",
    )
    timeout: float | None = setting(
        None,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=Flag(name="--timeout", help="Limit on the elapsed time of each attempt, e.g. 45m."),
        doc=(
            "limit on one attempt's elapsed time (counted on the monotonic clock: a step of"
            " the wall clock, NTP's or a resumed VM's, neither ends every agent at once nor"
            " lets one run on; time the machine sleeps does not count; an agent `swarm resume`"
            " adopts: [recovery.md](recovery.md#a-dead-manager))"
        ),
    )
    idle_timeout: float | None = setting(
        None,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=Flag(name="--idle-timeout", help="Stop an agent silent for this long, e.g. 10m."),
        doc="limit on time without agent output (its log not growing; the same clock), plus"
        " a retry delay its last line announced (Claude Code, Gemini CLI); Claude Code's"
        " stream, Codex's `--json` and aider write a reply only once whole: keep it above"
        " the longest one ([agents.md](agents.md#claude--claude-code))",
    )
    retries: int = setting(
        0,
        kind=Kind.INT,
        scope=Scope.PER_TASK,
        minimum=0,
        user_default=DEFAULT_RETRIES,
        flag=Flag(
            name="--retries",
            help="Rate-limited attempts resumed per agent before it gives up (default 5).",
        ),
        doc="rate-limited attempts resumed per agent before it gives up; a usage limit whose "
        "reset is stated does not use one up",
    )
    priority: int = setting(
        0,
        kind=Kind.INT,
        scope=Scope.PER_TASK,
        flag=None,
        doc="higher runs first among ready tasks",
    )
    copy: tuple[str, ...] = setting(
        (),
        kind=Kind.LOCAL_GLOBS,
        scope=Scope.PER_TASK,
        flag=None,
        doc="untracked files copied from the main checkout into the worktree (e.g. `.env`); "
        "never committed, never read through a symlink out of the repository "
        "([secrets.md](secrets.md#copy-files-stay-local))",
    )
    setup: tuple[tuple[str, ...], ...] = setting(
        (),
        kind=Kind.COMMANDS,
        scope=Scope.PER_TASK,
        flag=None,
        doc="commands run in a fresh worktree before the agent starts",
    )
    env: tuple[tuple[str, str], ...] = setting(
        (),
        kind=Kind.ENV,
        scope=Scope.PER_TASK,
        flag=None,
        doc="extra environment variables for the agent; not git's repository variables "
        "(`GIT_DIR`, `GIT_WORK_TREE`, `GIT_CONFIG*`, …: "
        "[secrets.md](secrets.md#input-that-is-refused)), nor a `SWARM_` name (swarm sets "
        "`SWARM_TASK_ID`, `SWARM_PORT`, … for each task); values of secret-named ones are "
        "redacted from output; merged variable by variable across levels",
    )
    expect_files: tuple[str, ...] = setting(
        (),
        kind=Kind.GLOBS,
        scope=Scope.TASK_ONLY,
        flag=None,
        type_doc="array of paths",
        doc="files that must exist in the worktree when the agent is done, else the checks fail",
    )
    repair: int = setting(
        0,
        kind=Kind.INT,
        scope=Scope.PER_TASK,
        minimum=0,
        flag=None,
        doc="times the output of failing checks goes back to the agent (same session) before "
        "the task fails; an attempt resumed after a rate limit is given it again",
    )
    no_placeholders: bool = setting(
        False,  # noqa: FBT003 - a field default, not a flag argument
        kind=Kind.BOOL,
        scope=Scope.PER_TASK,
        flag=None,
        doc="the checks fail on `TODO`/`FIXME`/`XXX`/placeholder/`NotImplementedError` lines "
        "the agent added (existing ones never count)",
    )
    link: tuple[str, ...] = setting(
        (),
        kind=Kind.DIRS,
        scope=Scope.PER_TASK,
        flag=None,
        doc="directories of the main checkout (`node_modules`, `.venv`) shared into the "
        "worktree as symlinks instead of copied or installed; never committed "
        "([disk.md](disk.md#link-share-a-directory-of-your-checkout))",
    )
    fallback: tuple[str, ...] = setting(
        (),
        kind=Kind.AGENT_NAMES,
        scope=Scope.PER_TASK,
        flag=None,
        doc="agents that carry the task on, in order, when its agent's provider is in a usage "
        'window or the agent ran out of retries, e.g. `["codex", "gemini"]` '
        "([agents.md](agents.md#providers-fallback-and-budget-agents))",
    )
    budget_agent: str = setting(
        "",
        kind=Kind.AGENT_NAME,
        scope=Scope.PER_TASK,
        flag=None,
        doc="the cheaper agent new attempts use once spending passes `budget_share` of "
        "`max_cost_usd`",
    )
    max_wait: float = setting(
        DEFAULT_MAX_WAIT,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=None,
        doc="the longest stated usage-limit reset a task waits for, whichever task's agent met "
        "the limit (before its first attempt too); a later reset fails the task (work kept) "
        "unless a fallback agent takes over. A reset under 5 minutes is a throttle, waited "
        "out whatever this says",
    )
    # Limits of the steps around the agent; None means the built-in default (STEP_TIMEOUT).
    setup_timeout: float | None = setting(
        None,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=None,
        default_doc="`30m`",
        doc="limit for each setup command; over it, the task fails ([processes.md](processes.md))",
    )
    check_timeout: float | None = setting(
        None,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=None,
        default_doc="`30m`",
        doc="limit for each check command; over it, the check fails",
    )
    resolve_timeout: float | None = setting(
        None,
        kind=Kind.DURATION,
        scope=Scope.PER_TASK,
        flag=None,
        default_doc="`timeout`, else `30m`",
        doc="limit for the agent resolving this task's conflicts in `swarm merge --resolve`",
    )

    @property
    def branch(self) -> str:
        """The task's branch name."""
        return BRANCH_PREFIX + self.id


class AttemptOutcome(enum.StrEnum):
    """How one launch of an agent ended, as recorded with the attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RATE_LIMITED = "rate_limited"
    STOPPED = "stopped"  # cut short by `swarm stop`
    TIMED_OUT = "timed_out"
    DISK_FULL = "disk_full"  # failed while the disk was full: tried again once there is room

    @classmethod
    def parse(cls, text: str | None) -> AttemptOutcome:
        """A stored outcome; anything unknown (or none) counts as a failure."""
        try:
            return cls(text or cls.FAILED)
        except ValueError:
            return cls.FAILED


class RunStatus(enum.StrEnum):
    """Where a run stands as a whole."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # `swarm stop` ended it
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM of the manager
    ABANDONED = "abandoned"  # its manager died and `swarm run --force` gave it up


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
        doc='cap on what the worktrees use (`"20G"`, `"500M"`, bytes; binary units): no new '
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
        kind=Kind.TEXT,
        scope=Scope.RUN,
        flag=Flag(
            name="--ray-address", metavar="ADDR", help="The Ray cluster (default: RAY_ADDRESS)."
        ),
        default_doc="`RAY_ADDRESS`, else a cluster on this machine",
        doc='the Ray cluster to run on (`executor = "ray"`)',
    )
    remote: str = setting(
        "origin",
        kind=Kind.NAME,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessIdentity:
    """What identifies a process across PID reuse: (pid, create_time, pgid)."""

    pid: int
    create_time: float
    pgid: int

"""A task's spec (its fields are the per-task settings) and the names derived from task ids."""

from __future__ import annotations

import re
from dataclasses import dataclass

from worktree_swarm.core.settings import Flag, Kind, Scope, setting

TASK_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
BRANCH_PREFIX = "swarm/"
# The branch `swarm merge` merges a run into (with the run id after it).
INTEGRATION_PREFIX = "swarm/integration-"
# The temporary worktree a `swarm merge --into` merges in, under the worktree root (no task
# id starts with "_"): nothing in it is anyone's work once that merge is over or killed.
SCRATCH_PREFIX = "_merge-"
# The integration worktree of a run, under the worktree root (with the run id after it).
INTEGRATION_DIR_PREFIX = "_integration-"
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
        doc="tasks that must finish first; unknown ids, one given twice, self-dependencies and "
        "cycles are errors",
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

"""Crash trials of `swarm merge` and `swarm clean --yes`: SIGKILL the command's whole process
group at a seeded random moment, run it again as the docs say, and check what is left.

Shared by tests/test_merge_crash.py and benchmarks/bench_merge_crash.py. A real `swarm run` of
five small agents is made once (a template, copied to the same path for every trial, so the
absolute paths git and the store hold stay right); each trial copies it back, starts the
command in its own session, kills the group after a uniform draw over the command's
measured duration, runs the command again, and lists what breaks the promise of
docs/merge.md and docs/clean.md (each a short line; an empty list is a pass).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# Writes its task's change; run in a merge worktree (`--resolve`), it keeps both sides of
# every conflict and stages them, leaving the commit to swarm.
AGENT = r"""
import pathlib, subprocess, sys
task = sys.argv[1]
cwd = pathlib.Path.cwd()
if cwd.name.startswith("_"):
    out = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"],
                         capture_output=True, text=True, check=True).stdout.split()
    for name in out:
        p = pathlib.Path(name)
        keep = [l for l in p.read_text().splitlines(keepends=True)
                if not l.startswith(("<<<<<<<", "=======", ">>>>>>>"))]
        p.write_text("".join(keep))
        subprocess.run(["git", "add", "--", name], check=True)
    sys.exit(0)
changes = {
    "a": {"f.txt": 2},
    "b": {"f.txt": 6},
    "c": {"f.txt": 6},
    "d": {"d/new.py": None},
    "e": {"g.txt": 3, "e.txt": None},
}[task]
for name, line in changes.items():
    p = pathlib.Path(name)
    if line is None:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"made by {task}\n" * 30)
        continue
    rows = p.read_text().splitlines(keepends=True)
    rows[line - 1] = f"line {line} by {task}\n"
    p.write_text("".join(rows))
"""

# Passes in the task's run; in a merge, task e's fails (its merge is undone: a reset to kill).
CHECK = (
    "import pathlib, sys, time\ntime.sleep(0.3)\n"
    "sys.exit(sys.argv[1] == 'e' and pathlib.Path.cwd().name.startswith('_'))\n"
)
OUTCOMES = {"a": "merged", "b": "merged", "c": "merged", "d": "merged", "e": "failed"}

TASKS = ("a", "b", "c", "d", "e")
MARKERS = ("<<<<<<< ", ">>>>>>> ")


@dataclass(slots=True)
class Trial:
    """What one trial did and found."""

    seed: int
    command: str
    kill_at: float = 0.0
    ended_first: bool = False  # the command was done before the kill
    killed_in: list[str] = field(default_factory=list)  # git steps running at the kill
    second_code: int | None = None
    violations: list[str] = field(default_factory=list)


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)
    return out.stdout.strip()


def _swarm(repo: Path, env: dict[str, str], *args: str, timeout: float = 300) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worktree_swarm.cli", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


class Template:
    """A repository after a real `swarm run` of five tasks, copied back for every trial."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.work = root / "work"  # the trial's place: repo, repo.swarm, tools
        self.saved = root / "saved"
        self.repo = self.work / "repo"
        self.env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}

    def build(self) -> None:
        """Make the repository, run the tasks, add a `release` branch; save it all."""
        tools = self.work / "tools"
        tools.mkdir(parents=True)
        (tools / "agent.py").write_text(AGENT)
        (tools / "check.py").write_text(CHECK)
        repo = self.repo
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "config", "user.name", "t")
        _git(repo, "config", "user.email", "t@example.com")
        (repo / "f.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
        (repo / "g.txt").write_text("".join(f"g {i}\n" for i in range(1, 11)))
        for i in range(10):  # a checkout that takes a moment to write
            (repo / "src" / f"m{i}").mkdir(parents=True)
            (repo / "src" / f"m{i}" / "code.py").write_text(f"VALUE = {i}\n" * 40)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "initial")
        _git(repo, "branch", "release")
        agent = json.dumps([sys.executable, str(tools / "agent.py"), "{task_id}"])
        check = {t: json.dumps([[sys.executable, str(tools / "check.py"), t]]) for t in TASKS}
        manifest = self.work / "tasks.toml"
        manifest.write_text(
            f"[defaults]\nagent = {agent}\n"
            + "".join(
                f'[[task]]\nid = "{t}"\nprompt = "do {t}"\n'
                + (f"checks = {check[t]}\n" if t in {"b", "d", "e"} else "")
                for t in TASKS
            )
        )
        code, text = _swarm(repo, self.env, "run", "--jobs", "2", str(manifest))
        if code != 0:
            raise RuntimeError(f"swarm run failed: {text}")
        shutil.copytree(self.work, self.saved, symlinks=True)

    def restore(self) -> None:
        """Put the saved repository back at its path, as the run left it."""
        with contextlib.suppress(FileNotFoundError):
            _rmtree(self.work)
        shutil.copytree(self.saved, self.work, symlinks=True)


def _rmtree(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:  # a check may have made directories read-only
            with contextlib.suppress(OSError):
                (Path(dirpath) / d).chmod(0o700)
    shutil.rmtree(path)


def _trace(path: Path) -> dict[str, list[str]]:
    """git processes by trace2 sid that started and never exited: what the kill cut."""
    started: dict[str, list[str]] = {}
    if not path.exists():
        return started
    for line in path.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == "start":
            started[ev["sid"]] = ev.get("argv", [])
        elif ev.get("event") in {"exit", "atexit"}:
            started.pop(ev["sid"], None)
    return started


def _step(argv: list[str]) -> str:
    at = 1
    while at < len(argv) and argv[at] in {"-c", "-C"}:
        at += 2
    rest = [a for a in argv[at:] if not a.startswith("-")]
    return (
        "git " + " ".join(rest[:2])
        if rest[:1] == ["worktree"]
        else "git " + (rest[0] if rest else "?")
    )


def _starts(trace: Path) -> int:
    """How many git processes have started so far (trace2 ``start`` events)."""
    try:
        return trace.read_bytes().count(b'"event":"start"')
    except FileNotFoundError:
        return 0


def _kill_at(t: Template, argv: list[str], at: float | tuple[int, float], trace: Path) -> Trial:
    """Run *argv*; kill its group *at* seconds in, or (k, d): d seconds after git's k-th start."""
    trial = Trial(seed=-1, command=" ".join(argv))
    env = {**t.env, "GIT_TRACE2_EVENT": str(trace)}
    with (t.work / "killed.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worktree_swarm.cli", *argv],
            cwd=t.repo, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    started = time.monotonic()
    if isinstance(at, tuple):  # in the command's own terms: its git steps
        while proc.poll() is None and _starts(trace) < at[0]:
            time.sleep(0.002)
        at = time.monotonic() - started + at[1]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(0.0, at - (time.monotonic() - started)))
    trial.kill_at = round(time.monotonic() - started, 3)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        trial.killed_in = sorted({_step(a) for a in _trace(trace).values()})
    else:
        trial.ended_first = True
    return trial


def measure(t: Template, argv: list[str]) -> tuple[float, int]:
    """How long *argv* takes, undisturbed, on the template, and how many git processes."""
    t.restore()
    if argv[0] == "clean":
        _dirty_worktrees(t)
    trace = t.root / "baseline-trace.json"
    trace.unlink(missing_ok=True)
    start = time.monotonic()
    code, text = _swarm(t.repo, {**t.env, "GIT_TRACE2_EVENT": str(trace)}, *argv)
    took = time.monotonic() - start
    if code not in {0, 1} or "Traceback" in text:
        raise RuntimeError(f"baseline {argv} failed ({code}): {text}")
    return took, _starts(trace)


def moment(rnd: random.Random, duration: float, gits: int) -> float | tuple[int, float]:
    """A seeded kill moment: half uniform over *duration*, half just after a git step starts
    (most of a merge's time is Python; git's steps are where a kill tears things)."""
    if rnd.random() < 0.5:
        return rnd.uniform(0, duration)
    return rnd.randint(1, max(1, gits)), rnd.uniform(0, 0.004)


def _dirty_worktrees(t: Template) -> dict[str, tuple[Path, str]]:
    """Uncommitted work in the worktrees of a, c and e (and its names)."""
    made = {}
    for task in ("a", "c", "e"):
        wt = t.work / "repo.swarm" / task
        name = f"left-{task}.txt"
        (wt / name).write_text(f"uncommitted work of {task}\n")
        made[task] = (wt, name)
    with (t.work / "repo.swarm" / "a" / "f.txt").open("a") as fh:
        fh.write("an edit of a's f.txt, not committed\n")
    return made


def _snapshot_checkout(repo: Path) -> tuple[str, str, str]:
    return (
        _git(repo, "rev-parse", "HEAD"),
        _git(repo, "status", "--porcelain=v1", "--untracked-files=all", "--ignored"),
        _git(repo, "ls-files", "-s"),
    )


def _common_checks(  # noqa: PLR0912 - one list of invariants
    t: Template, before: tuple[str, str, str], tips: dict[str, str]
) -> list[str]:
    """The invariants every command's recovery must leave."""
    bad = []
    repo = t.repo
    if _snapshot_checkout(repo) != before:
        bad.append("the user's checkout or index changed")
    gitdir = repo / ".git"
    for lock in gitdir.rglob("*.lock"):
        if lock.parent == gitdir / "swarm":
            continue  # swarm's flock files: never stale
        bad.append(f"lock left: {lock.relative_to(gitdir)}")
    notes = gitdir / "swarm" / "ref-moves"
    if notes.is_dir() and any(notes.iterdir()):
        bad.append(f"ref-move notes left: {sorted(p.name for p in notes.iterdir())}")
    fsck = subprocess.run(
        ["git", "fsck", "--no-dangling", "--no-progress"], cwd=repo, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    if fsck.returncode != 0 or fsck.stdout.strip():
        bad.append(f"fsck: {(fsck.stdout + fsck.stderr).strip()[:300]}")
    listing = _git(repo, "worktree", "list", "--porcelain")
    if "prunable" in listing or "locked" in listing:
        bad.append("git worktree list: " + " | ".join(
            line for line in listing.splitlines() if "prunable" in line or "locked" in line
        ))  # fmt: skip
    registered = {Path(line[9:]) for line in listing.splitlines() if line.startswith("worktree ")}
    root = t.work / "repo.swarm"
    for entry in root.iterdir() if root.is_dir() else []:
        if entry not in registered:
            bad.append(f"directory left under the worktree root: {entry.name}")
        if entry.name.startswith("_merge-"):
            bad.append(f"--into scratch worktree left: {entry.name}")
    for wt in registered:
        if wt == repo or not wt.is_dir():
            continue
        text = _git(wt, "status", "--porcelain", check=False)
        if any(line[:2] in {"UU", "AA", "DU", "UD"} for line in text.splitlines()):
            bad.append(f"unmerged paths in {wt.name}")
        if (Path(_git(wt, "rev-parse", "--git-dir")) / "MERGE_HEAD").exists():
            bad.append(f"a merge in progress in {wt.name}")
    for proc in psutil.process_iter():
        try:
            cwd = Path(proc.cwd())
        except (psutil.Error, OSError):
            continue
        if cwd.is_relative_to(t.work):
            bad.append(f"process left: {proc.pid} {proc.cmdline()[:3]}")
    for task, tip in tips.items():
        if not _reaches(repo, tip):
            bad.append(f"task {task}'s work ({tip[:12]}) is reachable from no ref")
    return bad


def _reaches(repo: Path, commit: str) -> bool:
    out = _git(repo, "for-each-ref", "--contains", commit, "--format=%(refname)", check=False)
    return bool(out)


def _tips(repo: Path) -> dict[str, str]:
    return {t: _git(repo, "rev-parse", f"swarm/{t}") for t in TASKS}


def _status(repo: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    code, text = _swarm(repo, env, "status", "--json")
    if code != 0:
        return {}
    return {r["task_id"]: r for r in json.loads(text)["tasks"]}


def merge_trial(  # noqa: PLR0912 - one list of invariants
    t: Template, seed: int, duration: tuple[float, int], *, into: bool
) -> Trial:
    """Kill `swarm merge --resolve [--into release]` at a seeded moment, run it again, check."""
    rnd = random.Random(seed)
    t.restore()
    repo = t.repo
    argv = ["merge", "--resolve", *(["--into", "release"] if into else [])]
    before, tips = _snapshot_checkout(repo), _tips(repo)
    release = _git(repo, "rev-parse", "release")
    trial = _kill_at(t, argv, moment(rnd, *duration), t.work / "trace.json")
    trial.seed, trial.command = seed, " ".join(argv)
    code, text = _swarm(repo, t.env, *argv)
    trial.second_code = code
    bad = trial.violations
    if "Traceback" in text or code not in {0, 1}:
        bad.append(f"second merge exit {code}: {text.strip()[-400:]}")
    bad += _common_checks(t, before, tips)
    target = "release" if into else _integration(repo)
    if target is None:
        bad.append("no integration branch after the second merge")
        return trial
    tip = _git(repo, "rev-parse", target)
    rows = _status(repo, t.env)
    for task in TASKS:
        row = rows.get(task, {})
        result = row.get("merge_result")
        if result != OUTCOMES[task]:
            bad.append(f"task {task}: merge result {result!r} ({row.get('merge_detail')})")
        if result != "merged":
            continue
        if row.get("merge_target") != target:
            bad.append(f"task {task}: merged into {row.get('merge_target')}, not {target}")
        if subprocess.run(["git", "merge-base", "--is-ancestor", tips[task], tip], cwd=repo,
                          check=False).returncode != 0:  # fmt: skip
            bad.append(f"task {task} recorded merged but its tip is not in {target}")
    # One merge commit per task on the target's first-parent line, none twice.
    subjects = _git(repo, "log", "--first-parent", "--format=%s", f"{release}..{tip}")
    merged = [line for line in subjects.splitlines() if line]
    if len(merged) != list(OUTCOMES.values()).count("merged"):
        bad.append(f"{target} has {len(merged)} commits past its start: {merged}")
    files = _git(repo, "grep", "-l", "-E", "^(<<<<<<<|>>>>>>>) ", tip, check=False)
    if files:
        bad.append(f"conflict markers on {target}: {files}")
    if into and _integration(repo) is not None:
        bad.append("an integration branch made by a merge --into")
    if not into:
        wt = t.work / "repo.swarm" / f"_integration-{_run_id(repo, t.env)}"
        if _git(wt, "status", "--porcelain", "--untracked-files=all", check=False):
            bad.append("the integration worktree holds uncommitted changes")
        if _git(wt, "rev-parse", "HEAD", check=False) != tip:
            bad.append("the integration worktree is not at its branch's tip")
    return trial


def _integration(repo: Path) -> str | None:
    out = _git(repo, "branch", "--list", "--format=%(refname:short)", "swarm/integration-*")
    return out.splitlines()[0] if out else None


def _run_id(repo: Path, env: dict[str, str]) -> str:
    code, text = _swarm(repo, env, "status", "--json")
    return str(json.loads(text)["run_id"]) if code == 0 else "?"


def prepare_clean(t: Template) -> None:
    """Merge everything and land it on main (the user's checkout), as before a clean."""
    code, text = _swarm(t.repo, t.env, "merge", "--resolve")
    if code not in {0, 1} or "Traceback" in text:
        raise RuntimeError(f"merge before clean failed: {text}")
    _git(t.repo, "merge", "-q", "--ff-only", _integration(t.repo) or "?")
    shutil.rmtree(t.saved)
    shutil.copytree(t.work, t.saved, symlinks=True)


def clean_trial(t: Template, seed: int, duration: tuple[float, int]) -> Trial:
    """Kill `swarm clean --yes` at a seeded moment (worktrees holding uncommitted work), run
    it again, check that the work is in its worktree or on its branch."""
    rnd = random.Random(seed)
    t.restore()
    repo = t.repo
    made = _dirty_worktrees(t)
    before, tips = _snapshot_checkout(repo), _tips(repo)
    trial = _kill_at(t, ["clean", "--yes"], moment(rnd, *duration), t.work / "trace.json")
    trial.seed, trial.command = seed, "clean --yes"
    code, text = _swarm(repo, t.env, "clean", "--yes")
    trial.second_code = code
    bad = trial.violations
    # a, c, e keep their branches (their checkpoints are on no other branch): exit 0 still.
    if "Traceback" in text or code != 0:
        bad.append(f"second clean exit {code}: {text.strip()[-400:]}")
    bad += _common_checks(t, before, tips)
    for task, (wt, name) in made.items():
        if (wt / name).exists():
            continue
        shown = _git(repo, "show", f"swarm/{task}:{name}", check=False)
        if shown != f"uncommitted work of {task}":
            bad.append(f"task {task}'s uncommitted {name} is neither in its worktree nor on"
                       " its branch")  # fmt: skip
            continue
        if task == "a" and "not committed" not in _git(repo, "show", "swarm/a:f.txt", check=False):
            bad.append("task a's uncommitted edit of f.txt is lost")
    for task in TASKS:
        wt = t.work / "repo.swarm" / task
        if wt.exists():
            bad.append(f"worktree {task} still there after the second clean")
    code, text = _swarm(repo, t.env, "doctor")
    if code != 0:
        bad.append(f"swarm doctor after the second clean finds problems: {text.strip()[-400:]}")
    return trial

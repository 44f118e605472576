"""swarm's own cost per task against the git floor, measured in the same run.

    python benchmarks/bench_overhead.py [--tasks 50 200] [--jobs 8 32] [--files 100]
                                        [--repo PATH] [--repeat 3] [--compare SRC ...]
                                        [--trace] [--profile] [--split]

For each size, a throwaway repository (N generated files, or a clone of `--repo`) and N tasks of
a no-op agent (writes one file and exits). Measured, in this order, per repetition:

- agents: the agent command run N times by itself (its CPU is subtracted from swarm's);
- floor: the minimal git a task needs (`worktree add` with checkout, one commit, `worktree
  remove`, branch delete), back to back, and in parallel at the same concurrency (metadata steps
  under one lock, as git needs);
- swarm: `swarm run` of the N tasks at `--jobs`, then `swarm clean --all --yes` (worktrees and
  branches removed, as the floor does); CPU of the manager and every process it waited for;
  `--compare SRC` also runs the swarm whose package is in the source tree SRC (for example
  `git archive` of an older commit) on a fresh copy of the same repository, the trees' order
  alternating between repetitions;
- the floor again, averaged with the first (a shared VM's speed drifts within minutes).

Prints, per task, swarm's CPU (run + clean, manager's own share in brackets) and wall (the
clean's share in brackets) beside the floor's, the ratios, and medians over `--repeat`; also
the user CPU alone and its ratio, since the kernel's share moves by up to 2x from one run to
the next on a shared VM while the user share holds within ~10%.
`--trace` counts the git processes per task (GIT_TRACE2) of swarm and of the floor, by
command. `--split` runs both once more with every git process started through a wrapper that
waits for it (`wait4`) and records its own CPU: git's CPU per task by command, swarm's beside
the floor's, and the managers' own (what swarm adds that is not git). `--profile` runs the
manager under cProfile in every thread (CPU time per thread) and prints its top functions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

AGENT = ["sh", "-c", 'echo done > "$SWARM_TASK_ID.txt"']
IDENT = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
SRC = Path(__file__).resolve().parents[1]

# Runs swarm's CLI in this interpreter and writes its own CPU (and, profiled, the merged
# per-thread cProfile of CPU time) when it exits.
WRAPPER = """
import atexit, cProfile, json, resource, runpy, sys, threading, time
out, prof_path = sys.argv[1], sys.argv[2]
done = []  # profiles of threads that ended (a thread still running keeps its own)
main = cProfile.Profile(time.thread_time) if prof_path else None
if main is not None:
    run = threading.Thread.run
    def profiled(self):
        p = cProfile.Profile(time.thread_time)
        p.enable()
        try:
            run(self)
        finally:
            p.disable()
            done.append(p)
    threading.Thread.run = profiled
    main.enable()
def dump():
    r = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
        json.dump({"self": r.ru_utime + r.ru_stime}, f)
    if main is not None:
        import pstats
        main.disable()
        stats = pstats.Stats(main)
        for p in list(done):
            stats.add(p)
        stats.dump_stats(prof_path)
atexit.register(dump)
sys.argv = ["swarm", *sys.argv[3:]]
runpy.run_module("worktree_swarm.cli", run_name="__main__")
"""

# Stands first on PATH for `--split`: starts the real git, waits for it and appends its command
# and own CPU (with its children's) to the file SWARM_BENCH_GITREC names.
GIT_WRAPPER = """#!{python} -S
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv({git!r}, ["git", *sys.argv[1:]])
_, status, use = os.wait4(pid, 0)
args, words = sys.argv[1:], []
while args:
    if args[0] in ("-c", "-C"):
        args = args[2:]
    elif args[0].startswith("-"):
        args = args[1:]
    else:
        words = args[:1]
        break
with open(os.environ["SWARM_BENCH_GITREC"], "a") as out:
    out.write(json.dumps([(words or ["?"])[0], use.ru_utime + use.ru_stime]) + "\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Measure:
    """One swarm run and clean: wall, CPU of everything, the managers' own CPU; clean's wall."""

    wall: float
    cpu: float
    user: float
    own: float
    clean_wall: float


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(["git", *IDENT, *args], cwd=cwd, check=True, capture_output=True, env=env)


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def children_user() -> float:
    """User CPU only: the kernel's share moves by 2x between runs on a shared VM."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime


def make_repo(root: Path, files: int, source: Path | None) -> None:
    if source is not None:
        subprocess.run(
            ["git", "clone", "-q", "--no-hardlinks", str(source), str(root)],
            check=True,
            capture_output=True,
        )
        return
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    for i in range(files):
        d = root / f"d{i // 1000}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.txt").write_text(f"file {i}\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "files")


def swarm_run(
    repo: Path, tasks: int, jobs: int, *, src: Path, trace: Path | None, profile: Path | None
) -> Measure:
    lines = [f"[defaults]\nagent = {json.dumps(AGENT)}\njobs = {jobs}\n"]
    lines += [f'[[task]]\nid = "t{i}"\nprompt = "work"\n' for i in range(tasks)]
    manifest = repo.parent / "tasks.toml"
    manifest.write_text("\n".join(lines))
    env = {**os.environ, "PYTHONPATH": str(src)}
    if trace is not None:
        env["GIT_TRACE2_EVENT"] = str(trace)
    wall = cpu = user = own = 0.0
    for i, argv in enumerate((["run", str(manifest)], ["clean", "--all", "--yes"])):
        out = repo.parent / "rusage.json"
        prof = str(profile) if profile is not None and i == 0 else ""
        c0, u0, w0 = children_cpu(), children_user(), time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", WRAPPER, str(out), prof, *argv],
            cwd=repo,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        took = time.perf_counter() - w0
        wall += took
        cpu += children_cpu() - c0
        user += children_user() - u0
        own += json.loads(out.read_text())["self"]
    return Measure(wall=wall, cpu=cpu, user=user, own=own, clean_wall=took)


def agents_alone(repo: Path, tasks: int) -> tuple[float, float]:
    """The agents' CPU, and its user share, run by themselves."""
    c0, u0 = children_cpu(), children_user()
    for i in range(tasks):
        env = {**os.environ, "SWARM_TASK_ID": f"a{i}"}
        subprocess.run(AGENT, cwd=repo, env=env, check=True)
    for i in range(tasks):
        (repo / f"a{i}.txt").unlink()
    return children_cpu() - c0, children_user() - u0


def floor(
    repo: Path, tasks: int, jobs: int, *, trace: Path | None = None
) -> tuple[float, float, float]:
    """Wall, CPU and user CPU of the floor."""
    lock = threading.Lock()
    where = repo.parent / "floor"
    where.mkdir(exist_ok=True)
    env = {**os.environ, "GIT_TRACE2_EVENT": str(trace)} if trace is not None else None

    def one(i: int) -> None:
        path = where / f"t{i}"
        with lock:
            git(repo, "worktree", "add", "-q", "--no-track", "-b", f"floor/t{i}", str(path), "HEAD",
                env=env)  # fmt: skip
        (path / f"t{i}.txt").write_text("done\n")
        git(path, "add", "-A", env=env)
        git(path, "commit", "-q", "-m", "work", env=env)
        with lock:
            git(repo, "worktree", "remove", "--force", str(path), env=env)
            git(repo, "branch", "-D", f"floor/t{i}", env=env)

    c0, u0, w0 = children_cpu(), children_user(), time.perf_counter()
    if jobs <= 1:
        for i in range(tasks):
            one(i)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(one, range(tasks)))
    shutil.rmtree(where, ignore_errors=True)
    return time.perf_counter() - w0, children_cpu() - c0, children_user() - u0


def git_counts(trace: Path) -> collections.Counter[str]:
    """Git processes by command (the first non-option words) in a GIT_TRACE2 event file."""
    counts: collections.Counter[str] = collections.Counter()
    if not trace.exists():
        return counts
    for line in trace.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") != "start":
            continue
        words = event["argv"][1:]
        while words[:1] == ["-c"]:
            words = words[2:]
        name = words[0] if words else "?"
        if name in {"worktree", "config", "--no-optional-locks"} and len(words) > 1:
            name += " " + words[1]
        counts[name] += 1
    return counts


def print_counts(label: str, counts: collections.Counter[str], tasks: int) -> None:
    total = sum(counts.values())
    rows = ", ".join(f"{name} {n / tasks:.2f}" for name, n in counts.most_common(14))
    print(f"    git processes per task, {label}: {total / tasks:.1f} ({rows})")


def split(pristine: Path, tmp: Path, tasks: int, jobs: int, src: Path) -> None:
    """Git's own CPU per task by command, swarm's and the floor's, and the managers' own."""
    bin_dir = tmp / "wrapped"
    bin_dir.mkdir()
    real = shutil.which("git")
    if real is None:
        raise SystemExit("git is not on PATH")
    wrapper = bin_dir / "git"
    wrapper.write_text(GIT_WRAPPER.format(python=sys.executable, git=real))
    wrapper.chmod(0o755)
    path, record = os.environ["PATH"], tmp / "git.jsonl"
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"
    os.environ["SWARM_BENCH_GITREC"] = str(record)
    try:
        floor(pristine, tasks, 1)
        floor_git = read_record(record)
        record.unlink()
        repo = tmp / "split" / "repo"
        repo.parent.mkdir()
        shutil.copytree(pristine, repo, symlinks=True)
        m = swarm_run(repo, tasks, jobs, src=src, trace=None, profile=None)
        swarm_git = read_record(record)
    finally:
        os.environ["PATH"] = path
        del os.environ["SWARM_BENCH_GITREC"]
    for label, used in (("floor", floor_git), ("swarm", swarm_git)):
        total = sum(cpu for _, cpu in used.values())
        count = sum(n for n, _ in used.values())
        top = sorted(used.items(), key=lambda kv: -kv[1][1])[:8]
        rows = ", ".join(f"{name} {cpu / tasks * 1000:.1f}" for name, (_, cpu) in top)
        print(f"    {label}'s git: {total / tasks * 1000:.1f} ms/task in"
              f" {count / tasks:.1f} processes ({rows})")  # fmt: skip
    print(f"    swarm's managers' own: {m.own / tasks * 1000:.1f} ms/task")


def read_record(record: Path) -> dict[str, tuple[int, float]]:
    """Processes and CPU by git command, as the wrapper recorded them."""
    used: dict[str, tuple[int, float]] = {}
    for line in record.read_text().splitlines() if record.exists() else []:
        name, cpu = json.loads(line)
        n, total = used.get(name, (0, 0.0))
        used[name] = (n + 1, total + cpu)
    return used


def print_profile(path: Path) -> None:
    import pstats  # noqa: PLC0415 - only with --profile

    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats("worktree_swarm", 30)
    kept = Path(tempfile.gettempdir()) / "swarm-manager.prof"
    shutil.copyfile(path, kept)  # the run's directory is removed
    print(f"profile kept in {kept} (python -m pstats {kept})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[50])
    parser.add_argument("--jobs", type=int, nargs="+", default=[8])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--repo", type=Path, help="clone this repository instead of generating")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compare", type=Path, nargs="*", default=[], help="other source trees")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--split", action="store_true", help="git's own CPU apart, by command")
    args = parser.parse_args()
    srcs = [SRC, *(p.resolve() for p in args.compare)]
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"repository: {args.repo or f'{args.files} generated files'}")
    print("tasks jobs swarm | swarm cpu/task (own) wall/task (clean's)"
          " | floor cpu/task wall/task | ratios")  # fmt: skip
    for tasks in args.tasks:
        for jobs in args.jobs:
            ratios: dict[Path, list[tuple[float, float, float]]] = {s: [] for s in srcs}
            for rep in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="swarm-overhead-") as tmp:
                    pristine = Path(tmp) / "pristine"
                    make_repo(pristine, args.files, args.repo)
                    agent_cpu, agent_user = agents_alone(pristine, tasks)
                    floor_trace = Path(tmp) / "floor.trace" if args.trace else None
                    _, f_seq, f_user = floor(pristine, tasks, 1, trace=floor_trace)
                    f_par, _, _ = floor(pristine, tasks, jobs)
                    if floor_trace is not None and rep == 0:
                        print_counts("floor", git_counts(floor_trace), tasks)
                    if args.split and rep == 0:
                        split(pristine, Path(tmp), tasks, jobs, SRC)
                    runs = []
                    # Alternate which tree goes first: the first run follows the floor's disk
                    # work (writeback of its checkouts), the others follow a swarm run.
                    order = list(enumerate(srcs))
                    if rep % 2:
                        order.reverse()
                    for n, src in order:
                        base = Path(tmp) / f"s{n}"
                        base.mkdir()
                        repo = base / "repo"
                        shutil.copytree(pristine, repo, symlinks=True)
                        trace = base / "swarm.trace" if args.trace and rep == 0 else None
                        prof = base / "manager.prof" if args.profile and rep == 0 else None
                        m = swarm_run(repo, tasks, jobs, src=src, trace=trace, profile=prof)
                        runs.append((src, m, trace, prof))
                    # The floor again after swarm: the machine's speed drifts (other tenants of
                    # a VM are charged to whatever runs), so both sides get the same mean.
                    _, f_seq2, f_user2 = floor(pristine, tasks, 1)
                    f_par2, _, _ = floor(pristine, tasks, jobs)
                    f_cpu = (f_seq + f_seq2) / 2 / tasks
                    f_usr = (f_user + f_user2) / 2 / tasks
                    f_par = (f_par + f_par2) / 2
                    f_wall = f_par / tasks
                    for src, m, trace, prof in sorted(runs, key=lambda r: srcs.index(r[0])):
                        cpu = max(m.cpu - agent_cpu, 0.0) / tasks
                        usr = max(m.user - agent_user, 0.0) / tasks
                        ratios[src].append((cpu / f_cpu, usr / f_usr, m.wall / f_par))
                        name = "this" if src == SRC else src.name
                        print(
                            f"{tasks:>5} {jobs:>4} {name:>5} | {cpu * 1000:>6.0f} ms"
                            f" ({m.own / tasks * 1000:>3.0f}) {m.wall / tasks * 1000:>6.0f} ms"
                            f" ({m.clean_wall / tasks * 1000:>4.0f})"
                            f" | {f_cpu * 1000:>6.0f} ms {f_wall * 1000:>6.0f} ms"
                            f" | cpu {cpu / f_cpu:.2f}x (user {usr * 1000:.0f} ms against"
                            f" {f_usr * 1000:.0f}: {usr / f_usr:.2f}x), wall {m.wall / f_par:.2f}x"
                        )
                        if trace is not None:
                            print_counts("swarm run + clean", git_counts(trace), tasks)
                        if prof is not None:
                            print_profile(prof)
            if args.repeat > 1:
                for src, rs in ratios.items():
                    name = "this" if src == SRC else src.name
                    cpu_med, user_med, wall_med = (
                        statistics.median(r[i] for r in rs) for i in range(3)
                    )
                    print(
                        f"{tasks:>5} {jobs:>4} {name:>5} | median of {len(rs)}:"
                        f" cpu {cpu_med:.2f}x (user {user_med:.2f}x), wall {wall_med:.2f}x"
                        " the floor"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

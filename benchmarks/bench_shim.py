"""What the agent shim adds to starting and ending a process, against a direct spawn.

    python benchmarks/bench_shim.py [--repeat 40] [--batch 20]

Times ``supervisor.spawn`` + wait of ``true`` (the cheapest command there is, so the
overhead is not hidden in the command's own start-up) three ways, interleaved in the same
run: without the shim (``SHIM_AVAILABLE`` off, as on macOS), under a shim started as its own
interpreter, and under a shim forked by a shim server (as a run starts its agents); median and
p90 of the wall time, and the CPU per start (this process and every process it waited for,
batches of ``--batch`` starts, a server started and ended in each). The same for
``python -I -S -c pass``, whose direct time is the floor for a shim in Python. Also times
stopping a sleeping command (SIGTERM honoured at once) each way.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worktree_swarm.infra import shim_server, supervisor
from worktree_swarm.infra.proc import clean_env

MODES = ("direct", "shim", "server")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _once(
    tmp: Path, argv: list[str], *, mode: str, stop: bool, shims: shim_server.ShimServer | None
) -> float:
    supervisor.SHIM_AVAILABLE = mode != "direct"
    log = tmp / f"{time.monotonic_ns()}.log"
    start = time.perf_counter()
    agent = supervisor.spawn(argv, cwd=tmp, env=clean_env(), log_path=log, grace=5, shims=shims)
    if stop:
        # Wait until the command itself runs, then time only the stop.
        while not log.exists() or b"up" not in log.read_bytes():
            time.sleep(0.001)
        start = time.perf_counter()
        agent.stop(grace=5)
    else:
        agent.wait(None)  # a blocking waitpid, or a pidfd for a forked shim
    return time.perf_counter() - start


def _batch(
    tmp: Path, argv: list[str], *, mode: str, stop: bool, size: int
) -> tuple[list[float], float]:
    """Wall times of *size* starts, and the CPU per start (the server's start and end included)."""
    cpu = _cpu()
    shims = shim_server.ShimServer() if mode == "server" else None
    walls = [_once(tmp, argv, mode=mode, stop=stop, shims=shims) for _ in range(size)]
    if shims is not None:
        shims.close()  # reaps the server, whose CPU then counts with its forked shims'
    return walls, (_cpu() - cpu) / size


def main() -> None:
    """Print the medians and their ratios to the direct spawn."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    true = shutil.which("true") or "/bin/true"
    python = [sys.executable, "-I", "-S", "-c"]
    sleeper = [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"]
    print(f"{platform.system()} {platform.release()}, Python {platform.python_version()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rounds = max(1, args.repeat // args.batch)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cases = (
            ("spawn+exit `true`", [true], False),
            # The floor of any Python shim: the interpreter's own start-up, spawned directly.
            ("spawn+exit `python -I -S -c pass`", [*python, "pass"], False),
            ("stop", sleeper, True),
        )
        for what, argv, stop in cases:
            walls: dict[str, list[float]] = {m: [] for m in MODES}
            cpus: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(rounds):
                for mode in MODES:
                    wall, cpu = _batch(tmp, argv, mode=mode, stop=stop, size=args.batch)
                    walls[mode] += wall
                    cpus[mode].append(cpu)
            direct = statistics.median(walls["direct"])
            parts = []
            for mode in MODES:
                median = statistics.median(walls[mode])
                p90 = statistics.quantiles(walls[mode], n=10)[-1]
                parts.append(
                    f"{mode} {median * 1000:.1f} ms (p90 {p90 * 1000:.1f}, x{median / direct:.2f},"
                    f" cpu {statistics.median(cpus[mode]) * 1000:.1f} ms)"
                )
            print(f"{what}: " + "; ".join(parts))


if __name__ == "__main__":
    main()

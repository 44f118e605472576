"""What the agent shim adds to starting and ending a process, against a direct spawn.

    python benchmarks/bench_shim.py [--repeat 40]

Times ``supervisor.spawn`` + wait of ``true`` (the cheapest command there is, so the
overhead is not hidden in the command's own start-up) with the shim and without it
(``SHIM_AVAILABLE`` off, as on macOS), interleaved in the same run; median and p90. The
same for ``python -I -S -c pass``, whose direct time is the floor for a shim in Python.
Also times stopping a sleeping command (SIGTERM honoured at once) both ways.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worktree_swarm.infra import supervisor
from worktree_swarm.infra.proc import clean_env


def _once(tmp: Path, argv: list[str], *, shim: bool, stop: bool) -> float:
    supervisor.SHIM_AVAILABLE = shim
    log = tmp / f"{time.monotonic_ns()}.log"
    start = time.perf_counter()
    agent = supervisor.spawn(argv, cwd=tmp, env=clean_env(), log_path=log, grace=5)
    if stop:
        # Wait until the command itself runs, then time only the stop.
        while not log.exists() or b"up" not in log.read_bytes():
            time.sleep(0.001)
        start = time.perf_counter()
        agent.stop(grace=5)
    else:
        agent.wait(None)  # a blocking waitpid: Popen.wait(timeout) polls with up to 50 ms steps
    return time.perf_counter() - start


def main() -> None:
    """Print the medians and their ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    true = shutil.which("true") or "/bin/true"
    python = [sys.executable, "-I", "-S", "-c"]
    sleeper = [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"]
    print(f"{platform.system()} {platform.release()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        cases = (
            ("spawn+exit `true`", [true], False),
            # The floor of any Python shim: the interpreter's own start-up, spawned directly.
            ("spawn+exit `python -I -S -c pass`", [*python, "pass"], False),
            ("stop", sleeper, True),
        )
        for what, argv, stop in cases:
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeat):
                for shim in (False, True):
                    times[shim].append(_once(tmp, argv, shim=shim, stop=stop))
            direct, shimmed = (statistics.median(times[s]) for s in (False, True))
            p90 = {s: statistics.quantiles(times[s], n=10)[-1] for s in (False, True)}
            print(
                f"{what}: direct {direct * 1000:.1f} ms (p90 {p90[False] * 1000:.1f}), "
                f"shim {shimmed * 1000:.1f} ms (p90 {p90[True] * 1000:.1f}), "
                f"ratio {shimmed / direct:.2f}, added {(shimmed - direct) * 1000:.1f} ms"
            )


if __name__ == "__main__":
    main()

"""Where a swarm command's own CPU goes, sampled by each thread's CPU clock.

    python benchmarks/sample_cpu.py [--out FILE] [--top 40] -- SWARM-ARGS...

Runs the swarm CLI in this interpreter (e.g. ``-- run tasks.toml`` in a repository) with a
thread that, every half millisecond, reads every other thread's CPU clock and charges what it
used since the last look to the frame that thread is in: the innermost frame of swarm's own
code and the library frame on top of it, and every swarm function on its stack. Unlike
cProfile, which adds its cost to every call and inflates code made of many small calls several
times, this charges only CPU really used, and costs one thread that sleeps. Prints the top
places, call chains and functions (with what they call) when the command exits (to FILE with
``--out``). The command's exit code is kept.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import runpy
import sys
import threading
import time
from types import FrameType

PERIOD = 0.0005


class Sampler:
    """Charges each thread's CPU, between two looks, to where it was at the second."""

    def __init__(self) -> None:
        # Nanoseconds of CPU (a Counter counts in ints): by place, by call chain, by function.
        self.places: collections.Counter[tuple[str, str]] = collections.Counter()
        self.chains: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()
        self._last: dict[int, int] = {}  # each thread's CPU clock at the last look
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(PERIOD)
            frames = sys._current_frames()  # noqa: SLF001 - the one way to see other threads
            for thread in threading.enumerate():
                if thread is self._thread or thread.ident not in frames:
                    continue
                try:
                    now = time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
                except OSError:
                    continue  # ended meanwhile
                used = now - self._last.get(thread.ident, now)
                self._last[thread.ident] = now
                if used > 0:
                    inner, top, chain, ours = _where(frames[thread.ident])
                    self.places[(inner, top)] += used
                    self.chains[chain] += used
                    for name in ours:
                        self.inclusive[name] += used

    def report(self, top: int) -> str:
        total = sum(self.places.values()) or 1
        lines = [f"CPU sampled: {total / 1e9:.2f}s"]
        for (inner, lib), used in self.places.most_common(top):
            lines.append(f"{_share(used, total)}  {inner}  [{lib}]")
        lines.append("")
        for chain, used in self.chains.most_common(top):
            lines.append(f"{_share(used, total)}  {' > '.join(chain)}")
        lines.append("")
        for name, used in self.inclusive.most_common(top):
            lines.append(f"{_share(used, total)}  {name} (with what it calls)")
        return "\n".join(lines) + "\n"


def _share(used: int, total: int) -> str:
    """Nanoseconds of CPU as seconds and as a percentage of *total*."""
    return f"{used / 1e9:7.3f}s {100 * used / total:5.1f}%"


def _where(frame: FrameType) -> tuple[str, str, tuple[str, ...], set[str]]:
    """Innermost swarm frame, the frame on top, the last four swarm frames (outer first), and
    every swarm function on the stack."""
    ours: list[str] = []
    current: FrameType | None = frame
    while current is not None:
        path = current.f_code.co_filename
        if "worktree_swarm" in path:
            ours.append(f"{path.split('worktree_swarm/')[-1]}:{current.f_code.co_name}")
        current = current.f_back
    top = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
    return (ours[0] if ours else "?"), top, tuple(reversed(ours[:4])), set(ours)


def main() -> None:
    """Run swarm with the sampler; print (or write) the report when it exits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the report here instead of stderr")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("swarm", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    swarm_args = args.swarm[1:] if args.swarm[:1] == ["--"] else args.swarm
    sampler = Sampler()

    def report() -> None:
        text = sampler.report(args.top)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as out:  # noqa: PTH123
                out.write(text)
        else:
            sys.stderr.write(text)

    atexit.register(report)
    sampler.start()
    sys.argv = ["swarm", *swarm_args]
    runpy.run_module("worktree_swarm.cli", run_name="__main__")


if __name__ == "__main__":
    main()

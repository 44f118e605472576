"""Redaction cost on an agent log: the trigger-anchored redactor against one regex pass.

    python benchmarks/bench_redact.py [--mb 5] [--repeat 3]

Builds a Claude Code stream-json style log (every line has token counts, some prose, a few
real secrets) and times ``Redactor(env)(text)`` against ``pattern.sub`` of the same patterns
over the whole text (what the redactor did before), median of --repeat. Both must give the
same output.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from worktree_swarm.infra.redact import _SHAPES_RE, REDACTED, Redactor

SECRET = "sk-ant-api03-" + "Q" * 40


def _log(megabytes: float) -> str:
    line = json.dumps(
        {
            "type": "assistant",
            "message": {
                "usage": {"input_tokens": 1234, "output_tokens": 56, "cache_read_input_tokens": 9},
                "content": [{"type": "text", "text": "Reading src/app.py; the key part is " * 6}],
            },
        }
    )
    leak = json.dumps({"type": "tool_result", "content": f"env: ANTHROPIC_API_KEY={SECRET}"})
    lines = [leak if i % 500 == 0 else line for i in range(int(megabytes * 2**20 / len(line)))]
    return "\n".join(lines) + "\n"


def _median(fn: object, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _whole_text_passes(redact: Redactor, text: str) -> str:
    """The baseline: each of the redactor's patterns run over the whole text with ``sub``."""
    known = redact._literal  # noqa: SLF001 - the baseline uses the redactor's own patterns
    if known is not None:
        text = known.sub(REDACTED, text)
    return _SHAPES_RE.sub(redact._replace, text)


def main() -> None:
    """Print both timings and their ratio."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    text = _log(args.mb)
    redact = Redactor({"ANTHROPIC_API_KEY": SECRET})
    anchored, fast = _median(lambda: redact(text), args.repeat)
    whole, slow = _median(lambda: _whole_text_passes(redact, text), args.repeat)
    if fast != slow or SECRET in fast:
        raise SystemExit("the two redactions differ, or the secret survived")
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"log: {len(text) / 2**20:.1f} MiB")
    print(f"trigger-anchored: {anchored:.3f} s")
    print(f"one regex pass:   {whole:.3f} s (baseline)")
    print(f"speedup: {whole / anchored:.1f}x")


if __name__ == "__main__":
    main()

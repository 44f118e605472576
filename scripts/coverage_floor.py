"""Fail when any module of the package is less covered than the floor.

coverage.py enforces one total (``fail_under``); this reads its JSON report
(``coverage json`` or pytest's ``--cov-report=json:FILE``) and holds every module to the floor:

    python3 scripts/coverage_floor.py FILE [PERCENT]

One line per module under the floor, exit 1; otherwise one summary line, exit 0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLOOR = 85.0


def main(argv: list[str]) -> int:
    """Check the report named in *argv*; the exit code."""
    if not 1 <= len(argv) <= 2:  # noqa: PLR2004 - FILE and an optional floor
        sys.stderr.write("usage: coverage_floor.py COVERAGE_JSON [PERCENT]\n")
        return 2
    floor = float(argv[1]) if len(argv) == 2 else FLOOR  # noqa: PLR2004
    try:
        report = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        files = {name: data["summary"]["percent_covered"] for name, data in report["files"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"coverage_floor: cannot read a coverage JSON report {argv[0]}: {exc}\n")
        return 2
    low = sorted((pct, name) for name, pct in files.items() if pct < floor)
    for pct, name in low:
        print(f"{name}: {pct:.1f}% covered, under the {floor:g}% floor")
    if low:
        return 1
    total = report["totals"]["percent_covered"]
    print(
        f"coverage {total:.0f}% in total, every one of {len(files)} modules at {floor:g}% or more"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

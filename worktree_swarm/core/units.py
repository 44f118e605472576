"""Durations and sizes: parsing what users write (``45m``, ``20G``) and showing them back."""

from __future__ import annotations

import datetime as dt
import math
import re
import time

from worktree_swarm.core.errors import BadInputError

# ASCII digits only: Python's \d (and float()) take any script's (`٣m` read as 3 minutes).
_DURATION_RE = re.compile(
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?",
    re.ASCII,
)
_SIZE_RE = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>(?:[kKmMgGtTpP][iI]?)?[bB]?)", re.ASCII)
_UNITS = "KMGTP"
_MINUTE = 60
_KIB = 1024


def parse_duration(value: object, where: str) -> float:
    """Return seconds for ``"45m"``, ``"90s"``, ``"1h30m"``, ``"1.5m"`` or a number of seconds.

    The result is always positive and finite; anything else raises BadInputError naming *where*.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = as_float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        match = _DURATION_RE.fullmatch(text) if text else None
        if match is not None and any(match.groupdict().values()):
            hours, minutes, secs = (float(match.group(g) or 0) for g in ("h", "m", "s"))
            seconds = hours * 3600 + minutes * 60 + secs
        elif _is_number(text):
            seconds = float(text)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise BadInputError(
            f"{where}: bad duration {shown(value)} (use seconds > 0 or e.g. '90s', '45m', '1h30m')"
        )
    return seconds


def as_float(number: float) -> float | None:
    """*number* as a float; None for an integer past a float's range (TOML takes 10**400)."""
    try:
        return float(number)
    except OverflowError:
        return None


_SHOWN = 40


def shown(value: object) -> str:
    """*value* as bad input names it, as TOML writes it, cut to 40 characters (400 digits)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, dt.date | dt.time):  # a datetime is a date
        text = value.isoformat()
    elif isinstance(value, dict | list):
        text = "a table" if isinstance(value, dict) else "an array"
    else:
        text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def local_time(at: float, fmt: str) -> str:
    """*at* (epoch seconds) as local time in *fmt*; one no clock shows (past 9999) as ``never``.

    An agent states its reset time: a garbage one must not fail the task that reads it.
    """
    try:
        return time.strftime(fmt, time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return "never"


def clock_time(at: float, *, now: float | None = None) -> str:
    """*at* as :func:`local_time` for a reader: with its date when 12 hours or more from *now*.

    A reset three days away shown as "23:01:00" reads as a time already past today.
    """
    now = time.time() if now is None else now
    near = abs(at - now) < _NEAR
    return local_time(at, "%H:%M:%S" if near else "%Y-%m-%d %H:%M")


_NEAR = 12 * 3600.0  # seconds


def format_duration(seconds: float | None) -> str:
    """``-``, ``12.3s``, ``4m05s`` or ``1h02m``."""
    if seconds is None:
        return "-"
    if seconds < _MINUTE:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), _MINUTE)
    if minutes < _MINUTE:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // _MINUTE}h{minutes % _MINUTE:02d}m"


def parse_size(value: object, where: str) -> int:
    """Return bytes for ``"20G"``, ``"500MB"``, ``"1.5GiB"``, ``"800k"`` or a number of bytes.

    Units are binary (K = 1024). The result is always positive, and bytes (no unit) are
    whole; anything else raises BadInputError naming *where*.
    """
    size: float | None = None
    unit = "B"
    if isinstance(value, int | float) and not isinstance(value, bool):
        size = as_float(value)
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value.strip().replace(" ", ""))
        if match is not None:
            unit = match.group("unit").upper().removesuffix("B").removesuffix("I") or "B"
            size = float(match.group("n")) * _KIB ** "BKMGTP".index(unit)
    if size is None or not math.isfinite(size) or size < 1:
        raise BadInputError(f"{where}: bad size {shown(value)} (use bytes or e.g. '500M', '20G')")
    if unit == "B" and not size.is_integer():  # `1.5` was 1 byte: a unit left out?
        raise BadInputError(
            f"{where}: bad size {shown(value)}: bytes are whole (use e.g. 2, '1.5K' or '1.5G')"
        )
    return int(size)


def format_size(n: int | None) -> str:
    """``-`` for None, else binary units with one decimal below 10: ``512B``, ``1.5G``, ``20G``."""
    if n is None:
        return "-"
    if n < _KIB:
        return f"{n}B"
    value = float(n)
    for unit in _UNITS:
        value /= _KIB
        if value < _KIB or unit == _UNITS[-1]:
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"  # noqa: PLR2004
    raise AssertionError  # pragma: no cover - the loop always returns


def format_count(n: int | None) -> str:
    """``-`` for None, else a count in few characters: ``950``, ``12.3k``, ``4.1M``."""
    if n is None:
        return "-"
    for limit, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= limit:
            return f"{n / limit:.1f}{unit}"
    return str(n)


def _is_number(text: str) -> bool:
    if not text.isascii():
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True

"""Text for people: squeezing untrusted text onto one line, and the callback that prints lines."""

from __future__ import annotations

import os
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterable

# Where a command reports progress, one line at a time (``click.echo``, ``print``, a list's
# ``append`` in tests).
Echo = Callable[[str], None]


def one_line(text: str, *, limit: int | None = None, controls: bool = False) -> str:
    """*text* on one line: runs of whitespace become one space.

    With *controls*, control characters (escapes included) become spaces too, so text from
    outside cannot break a one-line field or smuggle terminal escapes. With *limit*, text
    longer than that is cut to *limit* characters ending in ``…``.
    """
    if controls:
        text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    flat = " ".join(text.split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 1] + "…"


# Terminal escape sequences: CSI (colours, cursor moves), OSC (titles, clipboard) ended by BEL
# or ST, and the two-character ones.
# An unterminated OSC (ESC ] ...) ends at its line: it must not swallow the lines after it.
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?|\x1b[@-_]"
)


def without_escapes(text: str) -> str:
    """*text* without its terminal escape sequences (then :func:`printable` for the rest)."""
    return _ESCAPE_SEQUENCE.sub("", text) if "\x1b" in text else text


def printable(text: str, *, keep: str = "\n\t") -> str:
    """*text* with every control and format character but those in *keep* made a space.

    Lines from outside (an agent's output, a check's, a file name) shown on a terminal can
    then neither move the cursor, retitle the window, write the clipboard (OSC 52) nor
    reorder what is shown (bidi overrides); their lines stay lines.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c in keep or not unicodedata.category(c).startswith("C") else " " for c in text
    )


_LONE_RETURN = re.compile(r"\r(?!\n)")


def lone_returns_shown(text: str) -> str:
    """*text* with each carriage return not ending a line shown as ``^M`` (as ``less`` does).

    On a terminal it moves the cursor back: what follows it on the line would hide what
    came before (a command in a reviewed diff behind a harmless comment).
    """
    return _LONE_RETURN.sub("^M", text) if "\r" in text else text


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def is_utf8(text: str) -> bool:
    """Whether *text* came from UTF-8 bytes (others come as lone surrogates: os.fsdecode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file's text stops being UTF-8, to say so: ``not UTF-8 text (byte 0xff at ...)``."""
    data = bytes(exc.object)
    start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    column = len(data[start : exc.start].decode("utf-8", "replace")) + 1
    return (
        f"not UTF-8 text (byte {data[exc.start]:#04x} at line {line}, column {column}); "
        "save it as UTF-8"
    )


def as_shown(text: str) -> str:
    """*text* for a reader on the web (an issue's body, a pull request's prompt).

    Control characters (and halves of UTF-16 pairs) but newlines and tabs become spaces;
    format characters (a bidi override, a zero-width space, tag characters spelling out
    text), which hide or reorder words, are shown as what they are: ``<U+202E>``.
    """
    return text if text.isprintable() else "".join(map(_shown_char, text))


def _shown_char(char: str) -> str:
    if char in "\n\t":
        return char
    category = unicodedata.category(char)
    if category == "Cf":
        return f"<U+{ord(char):04X}>"
    return " " if category in {"Cc", "Cs"} else char


def path_text(path: str) -> str:
    """*path* as git prints it: quoted, with C escapes, when it holds a control character.

    A quote or a backslash is escaped too, so that one path is always one unambiguous line;
    and so is a format character (a bidi override would show the name reordered). A file
    name whose bytes the locale reads as other text than UTF-8 does (``文档`` under Latin-1)
    is quoted with every byte past ASCII escaped, as git's ``core.quotePath`` shows it.
    """
    raw = _name_bytes(path)
    if raw is not None and raw.decode("utf-8", "surrogateescape") != path:
        return '"' + "".join(map(_quoted_byte, raw)) + '"'
    if not any(c in _ESCAPES or _control(c) for c in path):
        return path
    return '"' + "".join(_ESCAPES.get(c) or _octal(c) for c in path) + '"'


def _name_bytes(path: str) -> bytes | None:
    """The bytes of the file name *path* (:func:`os.fsencode`); None for text no name holds."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # beyond the locale's encoding: text, shown as it is
        return None


def _quoted_byte(byte: int) -> str:
    char = chr(byte)
    return _ESCAPES.get(char) or (char if " " <= char <= "~" else f"\\{byte:03o}")


def paths_text(paths: Iterable[str]) -> str:
    """*paths* as one comma-separated list, each as :func:`path_text` shows it.

    A name that holds the separator (``a.txt, b.txt``) or starts or ends with a space is
    quoted too, so that a list always reads as the names it holds.
    """
    return ", ".join(map(_listed, paths))


def _listed(path: str) -> str:
    shown = path_text(path)
    if shown != path or not (", " in path or path != path.strip(" ")):
        return shown
    return f'"{path}"'


def _control(char: str) -> bool:
    # Cs: a byte of a name that is not UTF-8, kept as a surrogate (os.fsdecode).
    return unicodedata.category(char) in {"Cc", "Cf", "Cs"}


def _octal(char: str) -> str:
    if not _control(char):
        return char
    return "".join(f"\\{byte:03o}" for byte in char.encode("utf-8", errors="surrogateescape"))


def is_http_url(url: str) -> bool:
    """An http(s) URL with a host, no whitespace or control characters, a port that is one."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises for a port that is out of range or not a number
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)

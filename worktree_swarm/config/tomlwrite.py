"""A small TOML writer for the values swarm writes (the standard library only reads TOML).

Everything is written so that ``tomllib.loads`` gives back exactly the value that was written:
strings are always quoted and escaped, never bare, and comments cannot break out of their line.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_SHORT_ESCAPES |= {'"': '\\"', "\\": "\\\\"}


def string(text: str) -> str:
    """Return *text* as a TOML basic string on one line."""
    return '"' + "".join(_escape(c) for c in text) + '"'


def multiline_string(text: str) -> str:
    """Return *text* as a TOML multi-line basic string (newlines kept, everything else escaped)."""
    # The newline right after the opening quotes is dropped by TOML readers, so the text starts
    # on its own line and reads like the prompt it is.
    out: list[str] = []
    for i, char in enumerate(text):
        if char in "\n\t":
            out.append(char)
        elif char == '"':
            # A lone quote may stay as it is; escaping every quote that another quote (or the
            # closing delimiter) follows means no run of three can ever appear.
            following = text[i + 1] if i + 1 < len(text) else '"'
            out.append('\\"' if following == '"' else '"')
        else:
            out.append(_escape(char))
    return '"""\n' + "".join(out) + '"""'


def key(name: str) -> str:
    """Return *name* as a bare key when it can be one, else quoted."""
    return name if _BARE_KEY_RE.fullmatch(name) else string(name)


def value(item: object) -> str:
    """Return a string, integer, float, boolean, array or table as an inline TOML value."""
    if isinstance(item, str):
        return multiline_string(item) if "\n" in item else string(item)
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isnan(item):
            return "nan"
        if math.isinf(item):
            return "inf" if item > 0 else "-inf"
        return repr(item)
    if isinstance(item, Mapping):
        pairs = ", ".join(f"{key(str(k))} = {_inline(v)}" for k, v in item.items())
        return "{" + pairs + "}" if pairs else "{}"
    if isinstance(item, Sequence):
        return "[" + ", ".join(_inline(v) for v in item) + "]"
    raise TypeError(f"cannot write {type(item).__name__} as TOML")


def comment(text: str) -> str:
    """Return *text* as ``#`` comment lines; control characters become spaces."""
    lines = text.splitlines() or [""]
    cleaned = ("".join(" " if _is_control(c) else c for c in line).rstrip() for line in lines)
    return "\n".join(f"# {line}".rstrip() for line in cleaned)


def table_array(name: str, tables: Sequence[Mapping[str, object]]) -> str:
    """Return one ``[[name]]`` table per mapping, keys in order; None values are left out."""
    blocks: list[str] = []
    for table in tables:
        lines = [f"[[{key(name)}]]"]
        lines.extend(f"{key(k)} = {value(v)}" for k, v in table.items() if v is not None)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _inline(item: object) -> str:
    # Inline arrays and tables must stay on one line inside an inline table.
    return string(item) if isinstance(item, str) else value(item)


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    if _is_control(char):
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:  # noqa: PLR2004 - a lone surrogate is no character
            raise ValueError(f"cannot write U+{code:04X} (a lone surrogate) as TOML")
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"  # noqa: PLR2004
    return char


def _is_control(char: str) -> bool:
    # TOML forbids U+0000-U+001F and U+007F unescaped in strings, and outside of tab in comments.
    # Format and other invisible characters (bidi overrides, zero-width ones, tag characters)
    # are escaped too: what a reader of the file sees is what it holds.
    if char == "\t":
        return False
    return (
        char < " " or char == "\x7f" or (char > "\x7f" and unicodedata.category(char) in _INVISIBLE)
    )


_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})

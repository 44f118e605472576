"""What `swarm` commands share to read their options: the settings' flags, paths, exclusions."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click

from worktree_swarm.config import values
from worktree_swarm.config.settings import FLAGGED
from worktree_swarm.core.errors import BadInputError
from worktree_swarm.core.settings import Kind, Setting

if TYPE_CHECKING:
    from worktree_swarm.config.manifest import Overrides


def example(*lines: str) -> str:
    """A command's help epilog: example command lines, kept as typed (no rewrapping)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def setting_options(command: Callable[..., int]) -> Callable[..., int]:
    """One option per setting that has a flag (the settings table: ``core/settings.py``)."""
    for entry in reversed(FLAGGED):  # click lists options in the reverse order of decoration
        flag = entry.flag
        if flag is None:
            continue
        names = [name for name in (flag.short, flag.name) if name]
        options: dict[str, Any] = {"help": flag.help}
        if flag.metavar:
            options["metavar"] = flag.metavar
        # Every one may be given any number of times: once is a setting, twice bad input
        # (`-j 2 -j 3`, `--sandbox --no-sandbox`: never decided by which came last).
        options["multiple"], options["default"] = True, ()
        if entry.kind is Kind.BOOL:
            if flag.negatable:
                names[-1] = f"{flag.name}/--no-{flag.name.removeprefix('--')}"
            else:
                options["is_flag"] = True
        elif entry.kind is Kind.INT:  # read, as every setting, by config.values
            options["metavar"] = "INTEGER"
        elif entry.kind in {Kind.NUMBER, Kind.SHARE}:
            options["metavar"] = "NUMBER"
        elif entry.kind is Kind.CHOICE and entry.choices is not None and not flag.metavar:
            options["metavar"] = f"[{'|'.join(choice.value for choice in entry.choices)}]"
        command = click.option(*names, entry.key, **options)(command)
    return command


def overrides(flags: Mapping[str, object]) -> Overrides:
    """The settings given by the options of `setting_options` (the others are not given)."""
    from worktree_swarm.config.manifest import Overrides

    return Overrides(**{entry.key: _given(entry, flags.get(entry.key)) for entry in FLAGGED})


def _given(entry: Setting, value: object) -> object:
    """A setting option's value, None when not given; BadInputError when given twice.

    A list setting's option is repeatable: its values, in order.
    """
    values = tuple(value) if isinstance(value, tuple | list) else ()
    if entry.kind.is_list:
        return values or None
    if len(values) > 1 and entry.flag is not None:
        name = entry.flag.name
        if entry.kind is Kind.BOOL:  # as typed: --sandbox, --no-sandbox
            said = dict.fromkeys(name if v else f"--no-{name.removeprefix('--')}" for v in values)
            if len(said) > 1:
                raise BadInputError(f"{' and '.join(said)} exclude each other; give one of them")
            raise BadInputError(f"{next(iter(said))} given {len(values)} times; give it once")
        shown = ", ".join(str(v) for v in values)
        raise BadInputError(f"{name} given {len(values)} times ({shown}); give it once")
    return values[0] if values else None


def exclusive(**given: bool) -> None:
    """Refuse options that exclude each other; *given* maps each option's name to its use."""
    used = [f"--{name.replace('_', '-')}" for name, on in given.items() if on]
    if len(used) > 1:
        raise BadInputError(f"{' and '.join(used)} exclude each other; give one of them")


class NonEmptyPath(click.Path):
    """A path argument that is not empty: ``""`` would be taken for ``.`` (named as such).

    Not ``-C``: ``-C ""`` is the directory you are in, as git has it.
    """

    def convert(  # click's own signature
        self,
        value: Any,  # noqa: ANN401
        param: click.Parameter | None,
        ctx: click.Context | None,
    ) -> Any:  # noqa: ANN401
        """Refuse an empty path, else convert as click.Path."""
        if value == "":
            self.fail("an empty path; name one", param, ctx)
        return super().convert(value, param, ctx)


class WholeNumber(click.IntRange):
    """A whole-number option that is no setting, read as the settings' are (ASCII digits).

    Its range shown in its help as click's.
    """

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        super().__init__(min=minimum, max=maximum)
        self.minimum, self.maximum = minimum, maximum

    def convert(  # click's own signature
        self,
        value: Any,  # noqa: ANN401
        param: click.Parameter | None,
        ctx: click.Context | None,  # noqa: ARG002 - click's own signature
    ) -> int:
        """Read *value* (a default is an int already); bad input names the option."""
        if isinstance(value, int):
            return value
        where = max(param.opts, key=len) if param is not None else "value"
        return values.flag_int(str(value), where, self.minimum, self.maximum)


@contextlib.contextmanager
def paths_given() -> Iterator[None]:
    """A path you gave (a setting, a flag) with a name too long is bad input, not a crash.

    Python's ``is_dir()`` and ``is_file()`` say False for a missing file but raise this.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        name = exc.filename or "a path"
        raise BadInputError(f"{name}: {exc.strerror}; give a shorter path") from None


def needs(option: str, needed: str, *, given: bool, present: bool) -> None:
    """Refuse *option*, when *given*, unless *needed* is *present* (it would do nothing)."""
    if given and not present:
        raise BadInputError(f"{option} works only with {needed}")

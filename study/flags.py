"""Flags made from the configuration dataclasses, and their strings parsed into typed values, once.

`add_config_flags` adds one flag per field (`init_scale` -> `--init-scale`, help and choices from the
field's metadata); `config_from_flags` parses each given string by the field's annotation into a
tuple, a `Range`, a number, and lets the dataclass check it. A string that is not a value raises
`FieldError` for its field, as a bad value does. Part of the command line (`study/cli.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Callable, Sequence

from study.axes import Range, describe_space, parse_space
from study.errors import FieldError

EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of dataclass `cls`: `init_scale` -> `--init-scale`; its string is parsed
    into the field's type by `config_from_flags`."""
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        # argparse formats help with %: a literal one ("95% interval") is doubled.
        kwargs = {"help": as_flags(f.metadata.get("help", "")).replace("%", "%%"), "default": None, "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.default is not None:
            kwargs["help"] += f" (default: {_as_flag_value(f.default)})"
        group.add_argument(flag_of(f.name), **kwargs)


def config_from_flags(cls: type, args: argparse.Namespace, skip: Sequence[str] = ()):
    """The dataclass `cls` from the flags `add_config_flags` made, each given flag parsed into its
    field's type; the dataclass checks the values. Fields not given keep their defaults."""
    given = {f.name: parse_field(f, getattr(args, f.name)) for f in dataclasses.fields(cls)
             if f.name not in skip and getattr(args, f.name, None) is not None}
    return cls(**given)


def flag_of(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def as_flags(text: str) -> str:
    """A message or help text with each field named in backticks (`data_dir`) as its flag (--data-dir)."""
    return re.sub(r"`(\w+)`", lambda match: flag_of(match.group(1)), text)


def parse_field(f: dataclasses.Field, text: str):
    """A flag's string as the value of field `f` (by its annotation); FieldError if it is not one."""
    try:
        return _PARSERS[str(f.type)](text)
    except ValueError:
        raise FieldError(f.name, f"{text!r}: {_EXPECTED[str(f.type)]}") from None


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def _int_or_word(text: str) -> int | str:
    """A count, or a word (auto, off) that the dataclass checks."""
    return int(text) if text.lstrip("-").isdigit() else text


def _or_off(parse: Callable[[str], object]) -> Callable[[str], object]:
    """A parser of a field that may be None: "off" is None, anything else `parse`s."""
    return lambda text: None if text == "off" else parse(text)


def _as_flag_value(value) -> str:
    return describe_space(value) if isinstance(value, (tuple, Range)) else str(value)


_PARSERS = {
    "int": int,
    "float": float,
    "str": str,
    "str | None": str,
    "float | None": _or_off(float),
    "int | None": int,
    "tuple[int, ...]": int_tuple,
    "tuple[int, ...] | None": int_tuple,
    "int | str": _int_or_word,
    "Space": parse_space,
}
_EXPECTED = {
    "int": "expected an integer",
    "int | None": "expected an integer",
    "float": "expected a number",
    "float | None": "expected a number or off",
    "tuple[int, ...]": "expected comma-separated integers like 0,1,2",
    "tuple[int, ...] | None": "expected comma-separated integers like 0,1",
    "Space": "give a list like 0,0.2,0.4 or a range like 0:0.5",
}

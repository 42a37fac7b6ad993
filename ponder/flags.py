"""Command-line flags from a config dataclass: one style for every ponder command.

Each field becomes a kebab-case flag (`batch_size` -> `--batch-size`) typed by its
annotation (int, float, str, bool as --x/--no-x, `X | None`, list[X] as a repeatable
flag), with the field's `help` metadata; a field without a default is a required
flag. With `env_prefix`, every flag can also come from an environment variable
(`PONDER_MAX_N` for --max-n; repeatable flags take a list separated by the field's
`sep` metadata, default ","); the command line wins. A bad value, or a ValueError from
the dataclass's own checks, is a usage error naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def flag_type(tp: Any) -> tuple[Callable[[str], Any], bool]:
    """(converter, repeatable) for a field type: int, float, bool, str, `X | None` or list[X]."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        return flag_type(typing.get_args(tp)[0])[0], True
    return (parse_bool if tp is bool else tp), False


def parse_bool(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
    if text.strip().lower() not in words:
        raise ValueError(f"not a boolean: {text!r}")
    return words[text.strip().lower()]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; the description (a module docstring) kept as written."""


def parse(cls: type[T], argv: Sequence[str] | None, prog: str, description: str | None = None,
          env_prefix: str | None = None) -> T:
    """An instance of the dataclass `cls` from `argv` (and the environment, with `env_prefix`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    hints = typing.get_type_hints(cls)
    lists: dict[str, list[Any]] = {}
    # a base's keyword-only fields (e.g. the trainers' seed, device, bf16) after the command's own
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only):  # type: ignore[arg-type]
        flag = "--" + f.name.replace("_", "-")
        conv, repeatable = flag_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        help = f.metadata.get("help", "")
        if env_prefix is not None:
            var = env_prefix + f.name.upper()
            env = os.environ.get(var) or None  # set but empty (VAR=${UNSET} in compose) counts as unset
            if env is not None:
                try:
                    default = ([conv(v.strip()) for v in env.split(f.metadata.get("sep", ",")) if v.strip()]
                               if repeatable else conv(env))
                except ValueError:
                    parser.error(f"{var}: invalid {'bool' if conv is parse_bool else conv.__name__} value: {env!r}")
                required = False
            help += f" [env {var}]"
        if repeatable:
            parser.add_argument(flag, action="append", type=conv, default=None, help=help, required=required)
            lists[f.name] = default
        elif conv is parse_bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help)
        else:
            parser.add_argument(flag, type=conv, default=default, help=help, required=required,
                                metavar=f.name.upper())
    args = vars(parser.parse_args(argv))
    for name, default in lists.items():
        if args[name] is None:
            args[name] = default
    try:
        return cls(**args)
    except ValueError as e:
        parser.error(str(e))
        raise  # unreachable

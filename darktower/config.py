"""Settings for every launcher: a TOML file, ``DARKTOWER_*`` environment variables and flags.

Precedence: flags > environment > ``--config FILE.toml`` > defaults. A service declares its
settings as an attrs class whose fields carry ``metadata={"help": "..."}``; :func:`load`
builds the argument parser from it (so ``--help`` documents every option), reads the other
sources and structures the result with cattrs, so a wrong type is a clear error naming the
option, never a traceback deep inside the service.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs

T = TypeVar("T")

ENV_PREFIX = "DARKTOWER_"


class ConfigError(Exception):
    """A setting is missing, unknown or of the wrong type; the message names it."""


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """An attrs field with its ``--help`` text."""
    return attrs.field(default=default, metadata={"help": help}, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _is_bool(tp: Any) -> bool:
    return tp is bool or tp == "bool"


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` stays a list type."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) is not None and get_origin(tp) is not list and len(args) == 1:
        return args[0]
    return tp


def _from_text(tp: Any, text: str) -> Any:
    base = _base_type(tp)
    if _is_bool(base):
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if get_origin(base) is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def to_argv(settings: Any) -> list[str]:
    """The command-line flags that give ``settings`` (an attrs settings class) again: one per
    field that differs from its default (a launcher starting a copy of itself in a child
    process, e.g. the MH workers of ``python -m darktower --media-workers``)."""
    argv: list[str] = []
    for field in attrs.fields(type(settings)):
        value = getattr(settings, field.name)
        default: Any = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if value == default:
            continue
        if isinstance(value, bool):
            argv.append(_flag(field.name) if value else "--no-" + _flag(field.name)[2:])
        elif isinstance(value, list):
            argv.append(f"{_flag(field.name)}={','.join(str(v) for v in value)}")
        else:
            argv.append(f"{_flag(field.name)}={value}")
    return argv


def build_parser(cls: type[Any], prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=(
            f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
            "(e.g. --http-port -> DARKTOWER_HTTP_PORT) or as a key in the --config TOML file. "
            "Precedence: flags, environment, file, defaults."
        ),
    )
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from this TOML file")
    for field in attrs.fields(cls):
        help_ = field.metadata.get("help", "")
        default: Any = field.default if field.default is not attrs.NOTHING else None
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if _is_bool(_base_type(field.type)):
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_} (default: {default})",
            )
        else:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                default=argparse.SUPPRESS,
                metavar=field.name.upper(),
                help=f"{help_} (default: {default})",
            )
    return parser


def load(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str = "darktower",
    description: str = "",
    environ: Mapping[str, str] | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> T:
    """Build ``cls`` from flags, environment and an optional TOML file.

    Raises :class:`ConfigError` with the offending option's name on bad input.
    """
    environ = os.environ if environ is None else environ
    parser = parser or build_parser(cls, prog, description)
    args = vars(parser.parse_args(argv))
    names = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]

    raw: dict[str, Any] = {}
    config_file = args.pop("config", None) or environ.get(_env("config"))
    if config_file:
        path = pathlib.Path(config_file)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")
        raw.update(data)
    for name, field in names.items():
        value = environ.get(_env(name))
        if value is not None:
            try:
                raw[name] = _from_text(field.type, value)
            except ValueError as exc:
                raise ConfigError(f"{_env(name)}: {exc}") from exc
    for name, value in args.items():
        if name not in names:
            continue
        try:
            raw[name] = _from_text(names[name].type, value) if isinstance(value, str) else value
        except ValueError as exc:
            raise ConfigError(f"{_flag(name)}: {exc}") from exc
    return structure(cls, raw)


_converter = cattrs.Converter(forbid_extra_keys=True)


def structure(cls: type[T], raw: Mapping[str, Any]) -> T:
    try:
        return _converter.structure(dict(raw), cls)
    except cattrs.BaseValidationError as exc:
        messages = cattrs.transform_error(exc)
        raise ConfigError("invalid settings: " + "; ".join(messages)) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc

"""A run folder's config.json read back strictly, for `train` and `finetune` alike.

    config.json = {"version": N, SECTION: the fields of the run's frozen config dataclass, ...}

`--resume` continues a run exactly from this file, so it must still be what the run was made with.
A file edited by hand or damaged (not JSON, a section or key missing, a key no field has, a value of
the wrong JSON type such as "size": "big", a value the config's own checks refuse) is one line naming
the file and the key and what to do, never a traceback, and never a value silently defaulted, dropped
or converted. Only the fields added after a command's first runs were written may be missing (their
runs used the defaults), and fields that describe one invocation (`not_kept`, such as the folder the
run is in now) are not read.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from facerestore.errors import UsageError

CONFIG_FILE = "config.json"

Config = TypeVar("Config")
T = TypeVar("T")


class InvalidSetting(UsageError):
    """A config value out of range; `key` names its field, so that config.json's reader can say which
    key of the file is wrong (the message names the command-line option)."""

    def __init__(self, key: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.key = key


def checked_setting(key: str, check: Callable[[], T]) -> T:
    """`check()`, its UsageError naming `key` (InvalidSetting), so config.json's reader can say which key
    is wrong: for a config's checks that call a shared one (check_seed) rather than raise themselves."""
    try:
        return check()
    except InvalidSetting:
        raise
    except UsageError as exc:
        raise InvalidSetting(key, str(exc), hint=exc.hint) from None


def read_run_json(path: Path, *, missing: str = "") -> object:
    """A JSON file of a run folder (config.json, files.json): its value, or one line naming the file
    when it cannot be read or parsed. `missing`: the line for a file that does not exist (else the
    OSError line)."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        if missing and isinstance(exc, FileNotFoundError):
            raise UsageError(missing, hint="restore it, or start a new run with another --out") from None
        raise UsageError(f"cannot read {path} ({exc.strerror or exc})", hint="check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc})", hint=fix()) from None


def read_config_json(run: Path | str, version: int, sections: Sequence[str]) -> dict:
    """RUN/config.json as an object whose `version` this facerestore reads and whose `sections` are objects."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"nothing to resume: {path} does not exist", hint="start the run without --resume")
    data = read_run_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path} holds {shown(data)}, not a run config object", hint=fix())
    for key in ("version", *sections):
        if key not in data:
            raise UsageError(f"{path} has no key {key}", hint=fix(key))
    if data["version"] != version:
        raise UsageError(f"{path}: version is {shown(data['version'])}, but this facerestore reads version {version}",
                         hint="resume the run with the facerestore that wrote it, or start a new run with another --out")
    for key in sections:
        if not isinstance(data[key], dict):
            raise UsageError(f"{path}: {key} is {shown(data[key])}, not an object", hint=fix(key))
    return data


def config_from_record(cls: type[Config], path: Path, section: str, record: dict, *, may_miss: Collection[str] = (),
                       not_kept: Collection[str] = (), **fixed: object) -> Config:
    """The frozen dataclass `cls` from `record`, config.json's `section`, checked key by key.

    `may_miss`: fields added after the first runs (absent: their defaults); `not_kept`: fields not read
    back (`fixed` gives those the constructor needs, such as the run's folder). The dataclass's own
    checks raise InvalidSetting, which names the field.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - fields)
    if unknown:
        raise UsageError(f"{path}: unknown key {section}.{unknown[0]}", hint="remove it or correct its name in the file, or start a new run with another --out")
    missing = [name for name in sorted(fields - set(record)) if name not in may_miss and name not in not_kept]
    if missing:
        raise UsageError(f"{path} has no key {section}.{missing[0]}", hint=fix(f"{section}.{missing[0]}"))
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    for name, value in record.items():
        if name in not_kept:
            continue
        if not _fits(value, hints[name]):
            raise UsageError(f"{path}: {section}.{name} is {shown(value)}, not {_kind(hints[name])}", hint=fix(f"{section}.{name}"))
        values[name] = tuple(value) if isinstance(value, list) else float(value) if hints[name] is float else value
    try:
        return cls(**values, **fixed)
    except InvalidSetting as exc:
        detail = f"{exc}; {exc.hint}" if exc.hint else str(exc)
        raise UsageError(f"{path}: {section}.{exc.key} {shown(record.get(exc.key))} is invalid ({detail})", hint=fix(f"{section}.{exc.key}")) from None


def _fits(value: object, kind: object) -> bool:
    """Whether a JSON value is of a config field's type: no bool for a number, no "32" for 32."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_fits(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is tuple:
        return isinstance(value, list) and all(_fits(v, typing.get_args(kind)[0]) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)  # str


def _kind(kind: object) -> str:
    """A field's type as the refusal says it: 'an integer', 'a string or null', 'a list of integers'."""
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if typing.get_origin(kind) is tuple:
        return f"a list of {_kind(typing.get_args(kind)[0]).split(' ', 1)[1]}s"
    if typing.get_args(kind):
        return " or ".join(_kind(k) for k in typing.get_args(kind))
    return names.get(kind, str(kind))


def shown(value: object) -> str:
    """A value of the file as the refusal quotes it: JSON, so "32" and 32 read apart; a long one by its kind
    (a whole config put in a list would otherwise fill the line)."""
    text = json.dumps(value)
    if len(text) <= 60:
        return text
    return {list: "a list", dict: "an object", str: "a long string"}.get(type(value), text)


def fix(key: str | None = None) -> str:
    """What to do about a wrong `key` (None: the whole file): only a person can say what the run's record held."""
    return f"fix {key or 'the file'}{' in the file' if key else ''}, or start a new run with another --out"


__all__ = ["CONFIG_FILE", "InvalidSetting", "checked_setting", "config_from_record", "fix", "read_config_json", "read_run_json", "shown"]

"""What `--resume` may not change: a run's recipe, for `train` and `finetune` alike.

The recipe (the data, the model, the losses, the optimizer's settings, the seed ...) decides every
sample and every update, so a resume that changed it would no longer continue the run. It is checked
twice: the recipe options given on the command line against the run's config.json
(`refuse_given_changes`), and config.json against the recipe the newest checkpoint recorded
(`refuse_checkpoint_changes`), which finds a config.json edited after that checkpoint was written.
Either refusal is one line naming the folder (or its config.json) and each change, old -> new (the
first as values are written on the command line: `--amp off -> on`, `DATA_DIR /a -> /b`; the second
as config.json holds them: `amp false -> true`, `degradation "eq11" -> "mixed"`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from facerestore.errors import UsageError
from facerestore.training.config_file import CONFIG_FILE
from facerestore.training.loop import setting_text


def recipe_record(config: object, keys: Sequence[str]) -> dict:
    """The recipe fields `keys` of a config dataclass as JSON data (tuples as lists): what each
    checkpoint records, so that it compares equal with what a later resume reads back."""
    return {k: _as_json(getattr(config, k)) for k in keys}


def refuse_given_changes(run: Path | str, stored: object, given: Mapping[str, object], keys: Sequence[str],
                         options: Mapping[str, str] | None = None) -> None:
    """Refuse the recipe options given with --resume (`given`, None = not given) whose values differ from
    the run's config `stored`. `options` names the command-line option of a key where it is not --KEY."""
    differ = [k for k in keys if given.get(k) is not None and given[k] != getattr(stored, k)]
    if differ:
        named = options or {}
        shown = ", ".join(f"{named.get(k, '--' + k.replace('_', '-'))} {option_text(getattr(stored, k))} -> {option_text(given[k])}" for k in differ)
        raise UsageError(f"--resume keeps the recipe of the run in {run}, but {shown}",
                         hint="drop these options or give the run's values, or start a new run with another --out")


def option_text(value: object) -> str:
    """A recipe value as it is written on the command line, not as Python shows it: folders joined by
    spaces (DATA_DIR /data/a /data/b), a flag as on / off, a path without quotes, an option not given
    as (none); a weights record as `setting_text` shows it."""
    if value is None or (isinstance(value, (tuple, list)) and not value):
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(option_text(v) for v in value)
    if isinstance(value, dict):
        return setting_text(value)
    return str(value)


def refuse_checkpoint_changes(run: Path | str, checkpoint: Path, recorded: object, now: Mapping[str, object]) -> None:
    """Refuse to continue `checkpoint` (`recorded`: its state.json's recipe) with the recipe `now` (a
    `recipe_record` of the run's config). A key the checkpoint did not record is not compared: a
    checkpoint of an older facerestore is resumed on what it recorded."""
    if not isinstance(recorded, dict):
        return
    differ = [k for k in now if k in recorded and recorded[k] != now[k]]
    if differ:
        shown = ", ".join(f"{k} {_as_written(recorded[k])} -> {_as_written(now[k])}" for k in differ)
        raise UsageError(f"{Path(run) / CONFIG_FILE} differs from the recipe of its checkpoint {checkpoint.name}: {shown}",
                         hint=f"set {'them' if len(differ) > 1 else 'it'} back in {CONFIG_FILE} (and resume with the same options), or start a new run with another --out")


def _as_written(value: object) -> str:
    """A config.json value as that file holds it (`"eq11"`, `false`, `["/data/a"]`, `null`), since the
    refusal asks to set it back there; a weights record as `setting_text` shows it."""
    if isinstance(value, dict) and ("path" in value or set(value) == {"name"}):
        return setting_text(value)
    return json.dumps(value)


def _as_json(value: object) -> object:
    return [_as_json(v) for v in value] if isinstance(value, (tuple, list)) else value


__all__ = ["option_text", "recipe_record", "refuse_checkpoint_changes", "refuse_given_changes"]

"""weights.toml -> typed entries, plus the user's own registered weights (`weights import --name`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from facerestore.errors import UsageError


@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint: where it comes from, how to check it, what it may be used for."""

    name: str
    filename: str
    urls: tuple[str, ...] = ()
    sha256: str = ""
    size: int = 0
    license: str = "unknown"
    commercial_use: bool = False
    net: str = ""
    format: str = "state_dict"
    note: str = ""
    local: bool = False  # registered by the user with `weights import --name`

    @property
    def url_hint(self) -> str:
        return self.urls[0] if self.urls else (self.note or "no public URL")


def _catalogue_path() -> Path:
    packaged = Path(str(resources.files("facerestore") / "weights.toml"))
    if packaged.is_file():  # a wheel install: force-included beside the code
        return packaged
    return Path(__file__).resolve().parents[2] / "weights.toml"  # a source checkout / editable install


def _entry(name: str, fields: dict, local: bool = False) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        filename=fields["file"],
        urls=tuple(fields.get("urls", ())),
        sha256=fields.get("sha256", "").lower(),
        size=int(fields.get("size", 0)),
        license=fields.get("license", "unknown"),
        commercial_use=bool(fields.get("commercial_use", False)),
        net=fields.get("net", ""),
        format=fields.get("format", "state_dict"),
        note=fields.get("note", ""),
        local=local,
    )


@lru_cache(maxsize=1)
def official_catalogue() -> dict[str, WeightsEntry]:
    """The entries shipped with facerestore."""
    data = tomllib.loads(_catalogue_path().read_text(encoding="utf-8"))
    return {name: _entry(name, fields) for name, fields in data.items()}


def local_registry_path() -> Path:
    from facerestore.weights.store import home_dir

    return home_dir() / "local_weights.toml"


def load_catalogue() -> dict[str, WeightsEntry]:
    """Official entries plus the user's registered ones (which may not shadow official names)."""
    entries = dict(official_catalogue())
    path = local_registry_path()
    if path.is_file():
        for name, fields in tomllib.loads(path.read_text(encoding="utf-8")).items():
            entries.setdefault(name, _entry(name, fields, local=True))
    return entries


def get_entry(name: str) -> WeightsEntry:
    entries = load_catalogue()
    if name not in entries:
        raise UsageError(f"no weights named {name!r} in the catalogue", hint="`facerestore weights list` shows the names")
    return entries[name]


def entry_for_filename(filename: str) -> WeightsEntry | None:
    """The catalogue entry whose file has this name (how `weights import FILE` recognises a file)."""
    for entry in load_catalogue().values():
        if entry.filename == filename:
            return entry
    return None

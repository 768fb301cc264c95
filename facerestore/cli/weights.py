"""`facerestore weights list | pull | verify | import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facerestore.cli.app import CONTEXT, CommandGroup, app, err, fail, out
from facerestore.errors import FaceRestoreError

weights_app = typer.Typer(cls=CommandGroup, help="List, download, verify and import model weights.", context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode=None)
app.add_typer(weights_app, name="weights")


@weights_app.command("list", context_settings=CONTEXT)
def weights_list() -> None:
    """Every catalogued checkpoint: file, size (of the copy on disk, where there is one), license and where the copy a run loads is (or how to get it); hashes nothing."""
    from rich.table import Table
    from rich.text import Text

    from facerestore.weights.catalogue import load_catalogue
    from facerestore.weights.store import cache_dir, copy_in_use, damaged_line

    rows, manual, damaged = [], [], []
    for name, entry in load_catalogue().items():
        choice = copy_in_use(name)  # the copy a run loads, told without hashing any file
        # the copy on disk: the one a run loads, else the first damaged one (a run fails on it)
        size = size_text((choice.used or choice.passed_over[0][0]) if choice else None, entry.size)
        for path, why in choice.passed_over if choice else ():
            damaged.append(damaged_line(name, entry, path, why, choice.used))
        if choice and choice.used:
            where = str(choice.used.parent) + ("" if choice.checked else " (sha256 not checked yet)")
        elif choice:
            where = "damaged (below)"
        elif entry.urls:
            where = "downloads on first use"
        else:
            where = "manual download (below)"
            manual.append(f"{name}: {entry.note}; then `facerestore weights import {entry.filename}`")
        license_text = entry.license.split(" (")[0]
        # "non-commercial research only" says it already; weights of your own (`import --name`) carry their
        # data's and base model's license, which the tool cannot know: no claim either way
        if not entry.local and not entry.commercial_use and "commercial" not in license_text.lower():
            license_text += " non-commercial"
        rows.append((name, entry.filename, size, license_text, where))
    header = ("name", "file", "size", "license", "where")
    if not out.is_terminal:  # piped or redirected: one tab-separated line per checkpoint, nothing cut
        for row in (header, *rows):
            typer.echo("\t".join(row))  # rich would expand the tabs
    else:
        table = Table(*header)
        for index, column in enumerate(table.columns):
            if index < 2:  # the names to type (`weights pull NAME`, `--weights NAME`) are never cut
                column.min_width = max(len(row[index]) for row in rows)
            column.overflow = "fold"
        for row in rows:
            table.add_row(*(Text(value) for value in row))
        out.print(table)
    for line in manual + damaged:
        out.print(line, markup=False)
    out.print(f"cache: {cache_dir()} (FACERESTORE_HOME moves it; FACERESTORE_WEIGHTS adds folders to search first)", markup=False)


def size_text(path: Path | None, catalogued: int) -> str:
    """The size column: the real size of the copy on disk, the one a run loads or, with every copy
    damaged, the first (the catalogue's is only what a download will be, and unknown, '?', for the
    files with no published sha256); where it differs from the catalogue's, both, since that copy is
    another version or cut short. Without a copy, the catalogue's."""
    def mb(size: int) -> str:
        return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB" if size >= 1000 else f"{size} bytes"

    try:
        real = path.stat().st_size if path is not None else None
    except OSError:  # gone since it was found
        real = None
    if real is None:
        return mb(catalogued) if catalogued else "?"
    if not catalogued or real == catalogued:
        return mb(real)
    if mb(real) == mb(catalogued):  # too close for MB to tell apart
        return f"{real} bytes (catalogue: {catalogued} bytes)"
    return f"{mb(real)} (catalogue: {mb(catalogued)})"


@weights_app.command("pull", context_settings=CONTEXT)
def weights_pull(
    names: Annotated[list[str], typer.Argument(help="Catalogue names (see `facerestore weights list`).")],
) -> None:
    """Download checkpoints into the cache (resumable, sha256-checked, renamed into place when complete); FACERESTORE_OFFLINE=1 only checks what is there."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from facerestore.errors import UsageError
    from facerestore.weights.catalogue import load_catalogue
    from facerestore.weights.store import resolve

    unknown = [name for name in dict.fromkeys(names) if name not in load_catalogue()]
    if unknown:  # before any download: a typo must not wait for the other files
        fail(UsageError(f"no weights named {', '.join(map(repr, unknown))} in the catalogue", hint="`facerestore weights list` shows the names"))
    failed = False
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err) as progress:
        for name in names:
            task = progress.add_task(name, total=None)
            try:
                path = resolve(name, progress=lambda done, total, task=task: progress.update(task, completed=done, total=total or None),
                               replace_damaged=True)
                progress.console.print(f"{name}: {path}", markup=False)
            except FaceRestoreError as exc:
                failed = True
                progress.console.print(f"error: {exc.one_line()}", markup=False)
            progress.remove_task(task)  # the line above says how it ended; no stale "0/?" bar
    raise typer.Exit(1 if failed else 0)


@weights_app.command("verify", context_settings=CONTEXT)
def weights_verify() -> None:
    """Read every local checkpoint again and check its sha256, damaged copies a run passes over included (exit 1 if any differs); each one that differs is then named with why and what to do, as `weights list` does."""
    from facerestore.weights.catalogue import get_entry
    from facerestore.weights.store import damaged_line, verify_all

    damaged = []
    for line in verify_all():
        if line.status == "mismatch" and line.path is not None:
            damaged.append(damaged_line(line.name, get_entry(line.name), line.path, line.why, line.used))
        passed_over = f" (passed over: {line.used} is used)" if line.used else ""
        out.print(f"{line.name:32s} {line.status:10s} {line.path or ''}{passed_over}", markup=False)
    for text in damaged:
        out.print(text, markup=False)
    raise typer.Exit(1 if damaged else 0)


@weights_app.command("import", context_settings=CONTEXT)
def weights_import(
    file: Annotated[Path, typer.Argument(readable=False, help="A checkpoint you downloaded by hand (or trained / fine-tuned yourself).")],
    name: Annotated[Optional[str], typer.Option("--name", help="A name for weights of your own (then --weights NAME); not a catalogue, file or method name. Without it the file must be an official one, recognised by sha256 or file name.")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Replace a file whose sha256 was recorded on first use (entries with no sha256 in the catalogue); a catalogued sha256 is always checked.")] = False,
) -> None:
    """Copy a checkpoint into the cache: official files are recognised and checked by sha256."""
    from facerestore.weights.store import import_weights

    try:
        done = import_weights(file, name, verify=not no_verify)
    except FaceRestoreError as exc:
        fail(exc)
    if done.unchanged:
        whose = "the official weights" if done.official else "your weights"
        err.print(f"{file} is already {whose} '{done.name}' ({done.path}); nothing changed", markup=False)
    elif done.replaced:
        deleted = f" (its file {done.deleted} is deleted)" if done.deleted else ""
        err.print(f"imported {file} -> {done.path}, replacing your earlier weights '{done.name}'{deleted}", markup=False)
    else:
        err.print(f"imported {file} -> {done.path}", markup=False)

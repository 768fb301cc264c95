"""`facerestore methods`: what each restoration method is, its paper, license and weights."""

from __future__ import annotations

from facerestore.cli.app import app, out


@app.command("methods", context_settings={"help_option_names": ["-h", "--help"]})
def methods_command() -> None:
    """The restoration methods, their papers, licenses and the weights they need."""
    from rich.table import Table

    from facerestore.methods.registry import DEFAULT_METHOD, method_info, method_names

    import typer
    from rich.markup import escape

    rows = []
    for name in method_names():
        info = method_info(name)
        label = f"{name} (default)" if name == DEFAULT_METHOD else name
        rows.append((label, info.summary, info.paper, info.license, info.commercial_use, ", ".join(info.weights) or "bundled with facerestore"))
    if not out.is_terminal:  # piped: one tab-separated line per method, nothing cut
        typer.echo("\t".join(("method", "what", "paper", "license", "commercial use", "weights")))
        for label, summary, paper, license_text, commercial, weights in rows:
            typer.echo("\t".join((label, summary, paper, license_text, "yes" if commercial else "no", weights)))
        return
    table = Table("method", "what", "license", "weights")
    for column in table.columns:
        column.overflow = "fold"  # long paths (docs/baseline-model.md) are wrapped, never cut with an ellipsis
    for label, summary, paper, license_text, commercial, weights in rows:
        shown = escape(license_text) + ("" if commercial else " [red](non-commercial)[/]")
        table.add_row(escape(label), escape(f"{summary}\n{paper}"), shown, escape(weights))
    out.print(table)

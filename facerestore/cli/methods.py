"""`facerestore methods`: what each restoration method is, its paper, license and weights."""

from __future__ import annotations

from facerestore.cli.app import app, out


@app.command("methods", context_settings={"help_option_names": ["-h", "--help"]})
def methods_command() -> None:
    """The restoration methods, their papers, licenses and the weights they need."""
    from rich.table import Table

    from facerestore.methods.registry import DEFAULT_METHOD, method_info, method_names

    table = Table("method", "what", "license", "weights")
    for name in method_names():
        info = method_info(name)
        label = f"{name} (default)" if name == DEFAULT_METHOD else name
        license_text = info.license + ("" if info.commercial_use else " [red](non-commercial)[/]")
        table.add_row(label, f"{info.summary}\n{info.paper}", license_text, ", ".join(info.weights) or "bundled with facerestore")
    out.print(table)

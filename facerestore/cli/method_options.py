"""The method options (`--steps`, `-w/--fidelity`, `--eta`, `--start`, `--dr2-*`, `--no-enhancer`), declared once.

`restore`, `evaluate` and `clean-dataset` all take them, so each is declared here, with its help
text, and the commands annotate a parameter of the same name with it: the three `--help` pages
cannot drift apart. Each parameter is named after its `MethodOptions` field (registry.METHOD_SPECIFIC
lists them with their flags), so `method_knobs(...)` turns the values into MethodOptions keywords.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

Steps = Annotated[Optional[int], typer.Option("--steps", help="Sampling steps (network calls) of difface and idm, method default when omitted (difface: start/4 steps: 100 at the default --start 400, DifFace's ddim250 grid; else a divisor of --start, e.g. 200, 100, 40, 20, 8; idm: 10); no other method takes it.")]
Fidelity = Annotated[Optional[float], typer.Option("-w", "--fidelity", help="codeformer: fidelity weight w in [0,1]; higher keeps more of the input (default 0.5, 0.7 suggested for photos).", show_default=False)]
Eta = Annotated[Optional[float], typer.Option("--eta", help="difface: DDIM eta in [0,1] (default 0.5); 0 = most faithful to the input, 1 = most realistic.", show_default=False)]
Start = Annotated[Optional[int], typer.Option("--start", help="difface: timestep 1..999 the SwinIR estimate is diffused to (default 400); higher = more generated detail, less fidelity.", show_default=False)]
Dr2N = Annotated[Optional[int], typer.Option("--dr2-n", help="dr2: low-pass factor N dividing 256 (overrides the preset's N); bigger removes more degradation.", show_default=False)]
Dr2Tau = Annotated[Optional[int], typer.Option("--dr2-tau", help="dr2: output step tau, 0..98 on the 100-step grid (overrides the preset's tau); bigger removes more degradation.", show_default=False)]
Dr2Preset = Annotated[Optional[str], typer.Option("--dr2-preset", help="dr2: (N, tau) for mild (4,22), medium (8,35) or severe (16,35) degradation; default medium.", show_default=False)]
Dr2Auto = Annotated[bool, typer.Option("--dr2-auto", help="dr2: try the three presets on each face and keep the one with the best NIQE + low-frequency fidelity score (3x slower; not in the paper).")]
NoEnhancer = Annotated[bool, typer.Option("--no-enhancer", help="dr2: skip the SPARNetHD enhancer and return DR2's degradation-free estimate upsampled to 512.")]


def method_knobs(*, steps: int | None, fidelity: float | None, eta: float | None, start: int | None, dr2_n: int | None, dr2_tau: int | None,
          dr2_preset: str | None, dr2_auto: bool, no_enhancer: bool) -> dict[str, Any]:
    """The method options as MethodOptions keywords (unset ones too: None / False, MethodOptions' defaults).
    Keyword-only and without defaults, so a command that forgets one fails at once, not silently."""
    return {"steps": steps, "fidelity": fidelity, "eta": eta, "start": start, "dr2_n": dr2_n, "dr2_tau": dr2_tau,
            "dr2_preset": dr2_preset, "dr2_auto": dr2_auto, "no_enhancer": no_enhancer}

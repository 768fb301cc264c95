"""`facerestore evaluate`: score restoration methods on synthetic or real degradations, and the IDM
authenticity test, into a report folder (index.md, index.html, results.json, grids).

- `presets`: the degradations (IDM eq. 11 at fixed severities, or drawn), seeded per image;
- `runner`: `EvalSpec` -> `resolve_spec` -> `Evaluator(...).run()` -> `EvalResult`;
- `report`: `prepare_output` -> `write_report` -> `publish`.

Only `presets` is imported here; the runner and the report pull in the metrics and the methods.
"""

from facerestore.evaluation.presets import PRESETS, SEVERITIES

__all__ = ["PRESETS", "SEVERITIES"]

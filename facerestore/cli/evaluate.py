"""`facerestore evaluate`: compare methods on degraded faces (or real ones) and write a report."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from collections.abc import Mapping
from typing import Annotated, Any, NoReturn, Optional

import typer

from facerestore.cli.app import CONTEXT, PRECISION_HELP, app, err, fail, out, write_failed
from facerestore.cli.method_options import Dr2Auto, Dr2N, Dr2Preset, Dr2Tau, Eta, Fidelity, NoEnhancer, Start, Steps, method_knobs
from facerestore.errors import FaceRestoreError, UsageError
from facerestore.plural import counted
from facerestore.warning_lines import routed


def method_weights(methods: list[str], values: list[str]) -> dict[str, str]:
    """--weights FILE (one method) or METHOD:SPEC (any number) -> {method: spec}. A METHOD: prefix naming
    a method that is not evaluated is refused as that, not read as part of a path (an existing file
    whose name starts so is still a file; "C:/w.st" names no method)."""
    from facerestore.methods.registry import method_names

    chosen: dict[str, str] = {}
    for value in values:
        prefix, colon, rest = value.partition(":")
        if colon and prefix in methods:
            name, spec = prefix, rest
        elif colon and prefix in method_names() and not Path(value).expanduser().exists():  # a file named "idm:x" is a file
            raise UsageError(f"--weights {value}: {prefix} is not among the evaluated methods ({', '.join(methods)})",
                             hint=f"add {prefix} to --method, or write --weights METHOD:FILE for one of {', '.join(methods)}")
        elif len(methods) == 1:
            name, spec = methods[0], value
        else:
            raise UsageError(f"--weights {value!r}: with several --method, say which one it is for", hint=f"write --weights METHOD:FILE, e.g. {methods[0]}:FILE")
        if not spec:
            raise UsageError(f"--weights {value!r} names no file")
        if name in chosen:
            raise UsageError(f"--weights is given twice for {name}")
        chosen[name] = spec
    return chosen


def weights_record(spec: str) -> dict[str, str]:
    """What a report keeps of a method's --weights (`methods.NAME.weights`): the absolute path of every
    file it names, so the report names the model it measured wherever it was run from and after a
    registered name is reused; a registered or catalogue name is recorded as the file it resolved
    to, with the value as given beside it (`weights_name`). In a ROLE=VALUE list each value is."""
    path = Path(spec).expanduser()
    if path.exists():
        return {"weights": str(path.absolute())}
    parts = [_recorded_value(part) for part in spec.split(",")]
    record = {"weights": ",".join(text for text, _ in parts)}
    if any(named for _, named in parts):
        record["weights_name"] = spec
    return record


def _recorded_value(part: str) -> tuple[str, bool]:
    """One `VALUE` or `ROLE=VALUE` of --weights -> (its record, whether VALUE was a weights name)."""
    from facerestore.errors import WeightsError
    from facerestore.weights.catalogue import load_catalogue
    from facerestore.weights.store import locate

    role, eq, value = part.partition("=") if "=" in part else ("", "", part)
    value = value.strip()
    path = Path(value).expanduser()
    if value and path.exists():
        return f"{role}{eq}{path.absolute()}", False
    if value in load_catalogue():
        try:
            return f"{role}{eq}{locate(value, offline=True)}", True  # the method just loaded it: found, not fetched
        except WeightsError:
            return part, False
    return part, False


def route_method_options(names: list[str], knobs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """method -> the method options it gets: each one set in `knobs` (MethodOptions keywords, as
    method_options.method_knobs makes them) goes to the evaluated methods that take it (their
    `MethodInfo.knobs`, which `restore` checks too). One that none of them takes is a UsageError
    naming the methods that do: a knob is never silently dropped."""
    from facerestore.methods import registry
    from facerestore.methods.base import MethodOptions

    chosen = MethodOptions(**knobs)
    takers = {option: [n for n in names if option in registry.method_info(n).knobs] for option in registry.set_method_options(chosen)}
    for option, users in takers.items():
        if not users:
            flag, others = registry.METHOD_SPECIFIC[option], registry.methods_taking(option)
            where = f"it is an option of {', '.join(others)}" if others else "no method uses it"
            refused = f"{flag} is not used by {', '.join(names)}" if names else f"{flag} needs a --method"
            raise UsageError(f"{refused}; {where}", hint=f"drop {flag}, or add --method {others[0]}" if others else f"drop {flag}")
    return {name: {option: getattr(chosen, option) for option, users in takers.items() if name in users} for name in names}


def check_every_method(options: Mapping[str, Any]) -> None:
    """A UsageError for any value a method would refuse (`--steps 0`, `--dr2-preset nope`, a bad ROLE=,
    an enhancer= file with --no-enhancer, --precision fp16 on the CPU), from every method's rules
    (`registry.check_options`) before the first one loads: built one after another, a bad value for
    the second was said only after the first had loaded, or was hidden behind its missing-weights
    error. `options`: method -> MethodOptions, or the keywords routed to it. A method given no option,
    no file of its own and --precision auto has nothing to refuse and is passed over."""
    from facerestore.methods import registry
    from facerestore.methods.base import MethodOptions

    for name, given in options.items():
        chosen = given if isinstance(given, MethodOptions) else MethodOptions(**given)
        if registry.set_method_options(chosen) or chosen.weights is not None or chosen.precision != MethodOptions.precision:
            registry.check_options(name, chosen)


def method_options(names: list[str], *, device: str, weights: Mapping[str, str], offline: bool | None, knobs: Mapping[str, Any] | None = None,
                   precision: str = "auto") -> dict:
    """method -> the MethodOptions it is built with: the method options `route_method_options` gives it,
    its --weights, and the run's resolved device and --precision."""
    from facerestore.methods.base import MethodOptions

    routed = route_method_options(names, knobs or {})
    return {name: MethodOptions(device=device, weights=weights.get(name), offline=offline, precision=precision, **routed[name]) for name in names}


def build_methods(names: list[str], *, device: str, weights: dict[str, str], offline: bool | None, knobs: Mapping[str, Any] | None = None,
                  precision: str = "auto") -> dict:
    """Every method built before any image is touched (a missing checkpoint stops the run at once),
    each with its `method_options`; every method's options are checked before the first one loads."""
    from facerestore.methods import registry

    options = method_options(names, device=device, weights=weights, offline=offline, knobs=knobs, precision=precision)
    check_every_method(options)
    return {name: registry.build_method(name, options[name]) for name in names}


def parse_restored(values: list[str]) -> tuple[tuple[str, Path], ...]:
    parsed = []
    for value in values:
        label, eq, folder = value.partition("=")
        if not eq or not label.strip() or not folder.strip():
            raise UsageError(f"--restored {value!r}: expected LABEL=DIR", hint="e.g. --restored gfpgan=results/restored_faces")
        parsed.append((label.strip(), Path(folder.strip())))
    return tuple(parsed)


@app.command("evaluate", context_settings=CONTEXT)
def evaluate_command(
    method: Annotated[Optional[list[str]], typer.Option("-m", "--method", help="Method to evaluate; repeat it (or give a comma list) to compare methods in one report.", show_default=False)] = None,
    hq: Annotated[Optional[Path], typer.Option("--hq", readable=False, help="Folder of clean aligned face crops: inputs are synthesized from them with --degrade and scored against them.", show_default=False)] = None,
    lq: Annotated[Optional[Path], typer.Option("--lq", readable=False, help="Folder of real low-quality aligned face crops (no references): no-reference scores (NIQE) and FID against --ref-set.", show_default=False)] = None,
    degrade: Annotated[Optional[list[str]], typer.Option("--degrade", help="With --hq: mild, medium, severe (fixed IDM eq. 11 parameters) or eq11 (drawn per image); repeat for several tables. Default medium (none with only --authenticity).", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the degradations (each image gets its own generator from seed and name, so every run and method sees identical inputs) and of stochastic methods.")] = 0,
    ref_set: Annotated[Optional[Path], typer.Option("--ref-set", readable=False, help="FID reference: a folder of high-quality faces or an .npz of statistics (mu, sigma); adds fid to the metrics.", show_default=False)] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Comma list of psnr, ssim, lpips, identity, identity_deg, lmd, niqe, fid. Default with --hq: psnr,ssim,lpips,identity,lmd; with --lq: niqe (both: +fid with --ref-set).", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N images (sorted by path).", show_default=False)] = None,
    output: Annotated[Path, typer.Option("-o", "--out", readable=False, help="Report folder (index.md, index.html, results.json, grids/, inputs/, restored/); a rerun replaces it whole.")] = Path("report"),
    as_json: Annotated[bool, typer.Option("--json", help="Print results.json on stdout (for scripts); no tables, no progress.")] = False,
    weights: Annotated[Optional[list[str]], typer.Option("--weights", help="Checkpoint for a method instead of its default: FILE with one --method, else METHOD:FILE (repeat); multi-file methods take METHOD:ROLE=FILE,... as in `restore`.", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto (methods and the LPIPS/FID nets).")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    authenticity: Annotated[bool, typer.Option("--authenticity", help="Also run the IDM authenticity test on the --hq references: f(x) vs x and f(f(x)) vs f(x) (and f(f(x)) vs x) per method.")] = False,
    restored: Annotated[Optional[list[str]], typer.Option("--restored", help="Score another tool's results as an extra row: LABEL=DIR with files named after the inputs (DIR/SET/NAME.png with several --degrade; run that tool on OUT/inputs/).", show_default=False)] = None,
    steps: Steps = None,
    fidelity: Fidelity = None,
    eta: Eta = None,
    start: Start = None,
    dr2_n: Dr2N = None,
    dr2_tau: Dr2Tau = None,
    dr2_preset: Dr2Preset = None,
    dr2_auto: Dr2Auto = False,
    no_enhancer: NoEnhancer = False,
    batch_size: Annotated[int, typer.Option("-b", "--batch-size", help="Faces restored together in one batch.")] = 8,
    grid_images: Annotated[int, typer.Option("--grid-images", help="Images shown in the comparison grids of each table (4 per PNG); 0 for none.")] = 8,
    offline: Annotated[bool, typer.Option("--offline", help="Never download weights: missing method weights are an error, missing metric weights make the metric unavailable.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or tables; only warnings and errors.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Evaluate methods on synthetic degradations of clean faces (--hq) or on real degraded faces (--lq),
    optionally with the IDM authenticity test, and write a report (Markdown, HTML, JSON, image grids).

    The method options (--steps, -w/--fidelity, --eta, --start, --dr2-*, --no-enhancer) are those of
    `restore`: each goes to the evaluated methods that take it; one that none of them takes is refused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from facerestore.devices import resolve_device
    from facerestore.evaluation import report
    from facerestore.evaluation.runner import EvalSpec, Evaluator, check_inputs, resolve_spec, split_list

    command = ["facerestore", "evaluate", *sys.argv[2:]] if len(sys.argv) > 1 and sys.argv[1] == "evaluate" else []
    staging = None
    loading_warnings: list[str] = []  # said while the methods load (a damaged weights copy passed over)

    def loading_warning(line: str) -> None:
        loading_warnings.append(line)
        err.print(line, markup=False)
    try:
        names = list(split_list(method))
        knobs = method_knobs(steps=steps, fidelity=fidelity, eta=eta, start=start, dr2_n=dr2_n, dr2_tau=dr2_tau, dr2_preset=dr2_preset,
                      dr2_auto=dr2_auto, no_enhancer=no_enhancer)
        # a knob no evaluated method takes, a value one of them refuses (--precision on the device the
        # run resolves) or a --weights it cannot read as METHOD:ROLE=FILE (no file is read): exit 2 before
        # any folder is read (resolve_spec lists a --ref-set folder, 70 000 faces for FFHQ) and any model loads
        dev = resolve_device(device)
        chosen_weights = method_weights(list(dict.fromkeys(names)), weights) if weights and names else {}  # a name given twice: resolve_spec says so
        check_every_method(method_options(names, device=dev, weights=chosen_weights, offline=None, knobs=knobs, precision=precision))
        spec = resolve_spec(EvalSpec(
            methods=tuple(names), hq=hq, lq=lq, degradations=tuple(degrade or ()), seed=seed, ref_set=ref_set,
            metrics=None if metrics is None else (metrics,), limit=limit, authenticity=authenticity,
            restored=parse_restored(restored or []), batch_size=batch_size, grid_images=grid_images,
            offline=True if offline else None,
        ))
        if weights and not spec.methods:
            raise UsageError("--weights needs a --method")
        check_inputs(spec)  # an empty folder or unmatched --restored names: exit 2 before any model loads
        spec = replace(spec, device=dev)
        staging = report.prepare_output(output, [hq, lq, ref_set, *(folder for _, folder in spec.restored)])
        with routed(loading_warning):  # said now, and kept in the report with the run's
            built = build_methods(list(spec.methods), device=dev, weights=chosen_weights, offline=spec.offline, knobs=knobs, precision=precision)
    except FaceRestoreError as exc:
        if staging is not None:
            report.discard(staging)
        fail(exc, debug)
    except KeyboardInterrupt:  # Ctrl-C while the models load (they can take a minute): the same line as during the run
        interrupted(staging, output)
    except BaseException:
        if staging is not None:
            report.discard(staging)
        raise

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err, disable=quiet or as_json)
    told: list[str] = []  # the lines printed during the run
    try:
        with progress:
            task = progress.add_task("images", total=None)

            def message(line: str) -> None:
                told.append(line)
                progress.console.print(line, markup=False)

            evaluator = Evaluator(
                spec, built, staging, on_progress=lambda n: progress.update(task, advance=n), on_message=message,
                on_total=lambda total: progress.update(task, total=total), debug=debug,
            )
            result = evaluator.run()
        result.warnings[:0] = loading_warnings
        for name, given in chosen_weights.items():  # the report says which model a method's rows measured
            result.methods[name].update(weights_record(given))
        data = report.write_report(result, staging, command)
        report.publish(staging, output)
    except FaceRestoreError as exc:
        report.discard(staging)
        fail(exc, debug)
    except KeyboardInterrupt:  # Ctrl-C while restoring or writing the report
        interrupted(staging, output)
    except OSError as exc:  # a full disk or a lost mount while writing the report's pages or swapping it in
        report.discard(staging)
        fail(write_failed(exc, f"rerun the same command ({output}: {report_state(output)})"), debug)
    except BaseException:
        report.discard(staging)
        raise

    failures = result.all_failures()
    if as_json:
        typer.echo(json.dumps(data, indent=1, allow_nan=False))
    elif not quiet:
        print_tables(result)
        failed = f"; {counted(len(failures), 'failure')}" if failures else ""
        err.print(f"report: {output / 'index.html'} (also index.md, results.json){failed}", markup=False)
    elif failures:  # -q keeps errors: the exit status alone would not say what failed
        unsaid = [failure_line(what, why) for what, why in failures if not (why and any(why in said for said in told))]
        for line in unsaid[:3]:
            err.print(line, markup=False)
        more = f" ({len(unsaid) - 3} more listed there)" if len(unsaid) > 3 else ""
        err.print(f"{counted(len(failures), 'failure')}; report: {output / 'index.html'}{more}", markup=False)
    raise typer.Exit(1 if failures else 0)


def interrupted(staging: Path | None, output: Path) -> NoReturn:
    """Ctrl-C: remove the staging folder and say in one line what became of the report, as the other
    commands do (exit 130, the shell's code for SIGINT)."""
    from facerestore.evaluation import report

    if staging is not None:
        report.discard(staging)
    err.print(f"interrupted; {output}: {report_state(output)}; rerun the same command to evaluate again", markup=False)
    raise typer.Exit(130) from None


def report_state(output: Path) -> str:
    """What a run that stopped early left in --out: a run replaces the report whole or not at all."""
    return "the earlier report in it is unchanged" if (output / "results.json").is_file() else "nothing was written"


def failure_line(what: str, why: str) -> str:
    """One error line; most reasons already start with the path they are about."""
    return f"error: {why}" if why.startswith(what) else f"error: {what}: {why}"


def print_tables(result) -> None:
    """The summary tables on stdout, in Markdown as in index.md (ready to paste)."""
    from facerestore.evaluation.report import markdown_summary

    out.print("\n".join(markdown_summary(result)), markup=False, highlight=False)

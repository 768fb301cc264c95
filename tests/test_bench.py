"""Smoke tests of the bench/ scripts: each one's cheapest path runs and prints the table the docs quote.

Official-size nets are swapped for tiny ones of the same layout (the benches build them from the
configs' classmethods), the face detector for fixed boxes, and the photos and faces are synthetic,
so nothing here needs ../shared; ArcFace scores (bench_idm_model --bands) are checked when
../shared/weights is present. Timings are not checked: only what the tables say and label.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facerestore import pipeline
from facerestore.faces.align import FFHQ_TEMPLATE_512
from facerestore.faces.detect import DetectedFace
from facerestore.nets.codeformer import CodeFormerConfig
from facerestore.nets.guided_unet import UNetConfig
from facerestore.nets.sparnet import SPARNetConfig
from facerestore.nets.swinir import SwinIRConfig

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SHARED_WEIGHTS = Path(os.environ.get("FACERESTORE_SHARED", REPO.parent / "shared")) / "weights"  # as in conftest.py

# the official layouts scaled down (as in test_difface.py, test_dr2.py, test_codeformer.py)
TINY = {
    (UNetConfig, "difface_512"): UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 1, 2, 2), num_res_blocks=(1, 1, 1, 1, 1, 2),
                                            attention_levels=(4, 5), num_head_channels=64),
    (SwinIRConfig, "difface_512"): SwinIRConfig(img_size=64, embed_dim=12, depths=(2,), num_heads=(2,), window_size=8, mlp_ratio=2.0,
                                                upscale=8, unshuffle=8),
    (UNetConfig, "dr2_256"): UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 1, 2), num_res_blocks=(1, 1, 1, 1, 1), attention_levels=(4,),
                                        num_head_channels=64, resblock_updown=True),
    (SPARNetConfig, "hd2d_512"): SPARNetConfig(widths=(8, 16), res_blocks=1, hourglass_depth=1, hourglass_channels=8, spectral_norm=True),
    (CodeFormerConfig, "official"): CodeFormerConfig(nf=32, ch_mult=(1,) * 6, res_blocks=1, attn_resolutions=(16,), img_size=512, codebook_size=64,
                                                     emb_dim=16, dim_embd=32, n_head=8, n_layers=2, latent_size=256, connect_list=("16", "64", "128")),
}


@pytest.fixture
def bench(monkeypatch):
    """bench/ importable (its scripts import each other as siblings), official configs made tiny."""
    monkeypatch.syspath_prepend(str(BENCH))
    for (cls, name), config in TINY.items():
        monkeypatch.setattr(cls, name, classmethod(lambda cls, config=config: config))


def table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells) of the Markdown table whose header line starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1]) <= set("|-"), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def smooth_face(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 215, (16, 16, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (512, 512), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(BENCH / script), *args], env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ bench_methods


def test_bench_methods_quick_labels_bundled_and_random_weights(bench, tmp_path, capsys):
    import bench_methods

    bench_methods.WHY_RANDOM.clear()
    bench_methods.main(["--methods", "baseline,idm,codeformer,difface,dr2", "--quick", "--plots", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    rows = table(out, "| method | setting | calls/face | weights |")
    got = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    assert got == {
        ("baseline", "1 pass"): ("1", "bundled"),
        ("idm", "1 steps"): ("1", "bundled"),
        ("idm", "2 steps"): ("2", "bundled"),
        ("codeformer", "1 pass"): ("1", "random init"),
        ("difface", "1 steps"): ("1", "random init"),
        ("difface", "2 steps"): ("2", "random init"),
        ("dr2", "N=16, tau=98 (quick)"): ("2", "random init"),
        ("dr2", "N=16, tau=97 (quick)"): ("3", "random init"),
    }
    assert all(r[4:10] == ["cpu", "fp32", r[6], "1", "1", r[9]] and float(r[10]) > 0 for r in rows)
    fits = {r[0]: r[7] for r in table(out, "| method | device | precision | threads | faces/photo | s per call |")}
    assert set(fits) == {"idm", "difface", "dr2"}
    for method, calls in {"idm": 10, "difface": 100, "dr2": 26}.items():  # an estimate, or none when the fit is no cost
        assert re.fullmatch(rf"\d+\.\d s \({calls} calls\)", fits[method]) or fits[method].startswith("none:"), fits[method]
    assert "(an estimate, not a measurement)" in out
    for method in ("codeformer", "difface", "dr2"):
        assert f"{method}: random init of the official-size nets, because" in out
    assert "baseline: random init" not in out and "idm: random init" not in out


def test_bench_methods_fit_that_is_no_cost_gives_no_estimate(bench):
    import bench_methods

    def row(method: str, calls: int, seconds: float):
        return bench_methods.Row(method, f"{calls} steps", calls, "random init", "cpu", "fp32", 2, 1, 1, seconds, 0.0, 0.0)

    text = bench_methods.per_call_table([row("difface", 1, 15.3), row("difface", 2, 15.0), row("idm", 1, 0.09), row("idm", 2, 0.16)])
    fits = {r[0]: r for r in table(text, "| method | device |")}
    assert fits["difface"][7].startswith("none: the fit is not a cost")
    assert fits["idm"][5:] == ["0.070", "0.020", "0.7 s (10 calls)"]


def test_bench_methods_unknown_method_is_a_usage_error(bench, capsys):
    import bench_methods

    with pytest.raises(SystemExit) as exit_info:
        bench_methods.main(["--methods", "baseline,nope"])
    assert exit_info.value.code == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------ bench_diffusion


def test_bench_diffusion_fewest_steps(bench, monkeypatch, capsys):
    import bench_diffusion

    monkeypatch.setattr(sys, "argv", ["bench_diffusion.py", "--device", "cpu", "--repeat", "1"])
    bench_diffusion.main()
    out = capsys.readouterr().out
    assert "ms per UNet call and per face; full-size nets, random weights; cpu (2 threads" in out
    header = ("| method | dtype | batch | bare UNet call | step in loop | step / bare | loop overhead (stub net) | (bare + overhead) / bare "
              "| other stages | ms | calls | per face (est.) | per face (measured) |")
    assert header in out.splitlines()
    rows = table(out, "| method | dtype |")
    assert [(r[0], r[1], r[2], r[8], r[10], r[12]) for r in rows] == [
        ("difface", "fp32", "1", "SwinIR", "100", "-"),
        ("dr2", "fp32", "1", "resize+SPARNetHD", "26", "-"),
    ]
    for r in rows:
        bare, step, calls, per_face = float(r[3]), float(r[4]), int(r[10]), float(r[11])
        assert float(r[5]) == pytest.approx(step / bare, abs=0.01) or bare < 1  # tiny nets: ms round to few digits
        assert per_face == pytest.approx(calls * step + float(r[9]), abs=calls)  # calls x step + stages


# ------------------------------------------------------------------ bench_pipeline


def test_bench_pipeline_one_photo(bench, monkeypatch, tmp_path, tiny_baseline, capsys):
    import bench_pipeline

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "group.png"), cv2.resize(smooth_face(0), (440, 200)))
    found = tuple(DetectedFace(box=(x, 10, x + 128, 138), score=0.99, landmarks=FFHQ_TEMPLATE_512 * 0.25 + [x, 10]) for x in (10, 150, 290))
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: found)
    fake = type("FakeDetector", (), {"label": "RetinaFace resnet50 (facexlib, torch), weights /w/detection_Resnet50_Final.pth"})()
    monkeypatch.setattr(bench_pipeline, "load_detector", lambda name, device: fake)
    real = pipeline.scale_background

    def slow_background(*args, **kwargs):  # a once-per-photo cost that must not land in the per-face paste
        time.sleep(0.6)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "scale_background", slow_background)
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--photos", str(photos), "--weights", str(tiny_baseline), "--limit", "1", "--batch-size", "2",
                                      "--upscale", "2"])
    monkeypatch.setattr(bench_pipeline.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(bench_pipeline.os, "getloadavg", lambda: (5.12, 3.1, 1.9), raising=False)
    bench_pipeline.main()
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["method baseline, device cpu, precision fp32, 2 threads (torch and OpenCV), batch 2, upscale 2.0",
                                    "detector auto: RetinaFace resnet50 (facexlib, torch), weights /w/detection_Resnet50_Final.pth",
                                    "one run per photo after a warm-up on group.png; 2 CPUs, load average 5.1 at the start; times in seconds unless the column says ms"]
    header = ("| photo | size | detected at | faces | read s | detect s | prepare s | align s | restore s (batched) | restore s (1 by 1) | paste ms/face "
              "| total s | s/face (batched) |")
    assert header in out.splitlines()
    [row] = table(out, "| photo | size | detected at |")
    # a 440x200 photo is searched enlarged to a short side of 640 and, for large faces, at one of 400
    assert row[:4] == ["group.png", "440x200", "1408x640+880x400", "3"]
    assert float(row[6]) >= 0.6 and float(row[10]) < 100  # prepare holds the background; 0.6 s / 3 faces would be 200 ms
    summary = dict(table(out, "| summary | value |"))
    assert summary["photos / faces"] == "1 / 3"
    assert float(summary["prepare ms per photo (background, once)"]) >= 600 and float(summary["paste ms per face (without prepare)"]) < 100
    assert {"restore s per face, batched", "restore s per face, one at a time", "batched speed-up", "total s per photo (mean)"} <= set(summary)


class RecordingMethod:
    """Records the batch sizes it restores, and the OpenCV thread count it runs under."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def restore(self, crops, generator=None):
        self.calls.append((len(crops), cv2.getNumThreads()))
        return crops


def test_bench_pipeline_warms_up_the_one_at_a_time_pass_and_sets_opencv_threads(bench, monkeypatch, tmp_path, capsys):
    """--threads covers OpenCV (align, paste and every resize), not only torch; the first one-face
    call, whose shapes the batched warm-up never ran, is not timed; 3 photos by default (a few
    minutes on 2 cores: the 8 first shared group photos hold 406 faces)."""
    import bench_pipeline
    import torch

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        cv2.imwrite(str(photos / name), cv2.resize(smooth_face(0), (440, 200)))
    found = tuple(DetectedFace(box=(x, 10, x + 96, 106), score=0.99, landmarks=FFHQ_TEMPLATE_512 * 0.1875 + [x, 10]) for x in (10, 110, 210, 310))
    monkeypatch.setattr(pipeline, "detect_faces", lambda image, detector, **kw: found)
    monkeypatch.setattr(bench_pipeline, "load_detector", lambda name, device: object())
    method = RecordingMethod()
    monkeypatch.setattr(bench_pipeline, "build_method", lambda name, options: method)
    monkeypatch.setattr(sys, "argv", ["bench_pipeline.py", "--photos", str(photos), "--batch-size", "2", "--threads", "1"])
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        bench_pipeline.main()
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "method baseline, device cpu, precision auto, 1 thread (torch and OpenCV), batch 2, upscale 1.0"
    assert out.splitlines()[1] == "detector auto: object"
    assert [r[0] for r in table(out, "| photo | size |")] == ["a.png", "b.png", "c.png"]
    # warm-up: the first photo in batches of 2, then one face alone; timed, each photo: batches of 2, then its 4 faces one at a time
    assert [size for size, _ in method.calls] == [2, 2, 1] + [2, 2, 1, 1, 1, 1] * 3
    assert {threads for _, threads in method.calls} == {1}


def test_bench_pipeline_without_photos_is_one_line(bench, tmp_path):
    done = run_script("bench_pipeline.py", "--photos", str(tmp_path / "absent"))
    assert done.returncode == 1
    assert done.stderr.strip() == f"bench_pipeline: no image in {tmp_path / 'absent'} (does not exist); pass --photos FOLDER"


# ------------------------------------------------------------------ bench_background


def test_bench_background_labels_random_weights_and_gives_each_upsamplers_output_size(tmp_path):
    """Without the official files (an empty weights folder, offline) it times full-size nets of their
    shape with random weights, and says so; tiles of 8 px over a 16 px photo go through the tiling."""
    env = {"FACERESTORE_WEIGHTS": str(tmp_path / "none"), "FACERESTORE_HOME": str(tmp_path / "home"), "FACERESTORE_OFFLINE": "1"}
    done = run_script("bench_background.py", "--size", "16", "--tile", "8", "--repeat", "1", "--threads", "1", env=env)
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout, "| --bg-upsampler | weights |")
    assert [r[:3] for r in rows] == [["realesrgan", "random (same shape)", "32x32"], ["realesrgan-x4", "random (same shape)", "64x64"]]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows)


# ------------------------------------------------------------------ bench_memory


def test_bench_memory_measures_each_case_in_its_own_process(bench, tmp_path):
    """One row per photo and scale, with the child's own peak RSS (it imports torch and the models:
    hundreds of MB, never the bench's own few); a refused case says why instead of a face count."""
    y, x = np.mgrid[0:300, 0:400]
    cv2.imwrite(str(tmp_path / "small.png"), np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8))
    done = run_script("bench_memory.py", "--photos", str(tmp_path / "small.png"), "--upscale", "2,4", "--max-pixels", "1000000", "--big", "none",
                      timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{os.cpu_count()} CPUs, load average ")
    fitting, refused = table(done.stdout, "| photo | size | upscale | faces | peak RSS MB | seconds |")
    assert fitting[:4] == ["small.png", "400x300", "2", "0"] and 200 < float(fitting[4]) < 20000 and float(fitting[5]) > 0
    assert refused[:3] == ["small.png", "400x300", "4"]
    assert refused[3] == f"refused: {tmp_path / 'small.png'}: output would be 1.92 MP, over the 1 MP limit; use a smaller --upscale or raise --max-pixels"


def test_bench_memory_gives_the_upright_size(bench, tmp_path):
    import bench_memory
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # turned a quarter: read as 30x40
    Image.new("RGB", (40, 30)).save(tmp_path / "turned.jpg", exif=exif)
    assert bench_memory.photo_size(tmp_path / "turned.jpg") == "30x40"


# ------------------------------------------------------------------ bench_idm_model (+ identity_bands, second_identity)


def synthetic_report(identity: bool) -> dict:
    """An evaluate results.json reduced to what bench_idm_model reads: one set, the input and a method, 3 faces."""
    scores = {"input": ([30.0, 31.0, 29.0], [0.80, 0.70, 0.90]), "m": ([30.5, 31.4, 29.2], [0.79, 0.69, 0.89])}

    def metrics(label: str) -> dict:
        psnr, ident = scores[label]
        return {"psnr": {"mean": float(np.mean(psnr))}, "ssim": {"mean": 0.9},
                "identity": {"mean": float(np.mean(ident))} if identity else {"mean": None, "reason": "identity (ArcFace) is unavailable: no weights"}}

    images = [{"key": str(i), "status": "ok", "scores": {label: {"psnr": {"value": s[0][i]}, "identity": {"value": s[1][i] if identity else None}}
                                                         for label, s in scores.items()}} for i in range(3)]
    rows = [{"label": "input", "kind": "input", "metrics": metrics("input")},
            {"label": "m", "kind": "method", "metrics": metrics("m"), "seconds_per_face": 0.5}]
    return {"hq": "faces", "seconds": 12.0, "methods": {"m": {"kind": "method", "weights": "/runs/idm/idm.safetensors"}},
            "sets": [{"name": "severe", "images_total": 3, "rows": rows, "images": images}]}


@pytest.mark.parametrize("identity", [True, False])
def test_bench_idm_model_report_table(bench, monkeypatch, tmp_path, capsys, identity):
    import bench_idm_model

    report = tmp_path / "results.json"
    report.write_text(json.dumps(synthetic_report(identity)))
    monkeypatch.setattr(sys, "argv", ["bench_idm_model.py", "--report", str(report)])
    bench_idm_model.main()
    out = capsys.readouterr().out
    assert "3 faces from faces, 12 s in all\nmodels: m = /runs/idm/idm.safetensors\n" in out  # which model the row "m" is
    rows = table(out, "| set | row | PSNR | SSIM | identity | beats input on PSNR")
    assert rows[0] == ["severe", "input", "30.00", "0.9000", "0.8000" if identity else "-", "", "", "-"]
    assert rows[1][:6] == ["severe", "m", "30.37", "0.9000", "0.7900" if identity else "-", "yes (+0.37 ± 0.09, 3/3)"]
    assert rows[1][6:] == (["NO (-0.0100 ± 0.0000, 0/3)", "0.50"] if identity else ["-", "0.50"])
    assert ("not measured (identity column: -): identity (ArcFace) is unavailable: no weights" in out) != identity


def test_bench_idm_model_limit_2_with_bands_and_dlib(bench, tmp_path, tiny_baseline):
    """The real run: `facerestore evaluate` on 2 synthetic faces, then --bands and --dlib on its report.
    ArcFace (identity, --bands) comes from ../shared/weights when present; without it the bench says so."""
    hq = tmp_path / "hq"
    hq.mkdir()
    for i in range(2):
        cv2.imwrite(str(hq / f"{i}.png"), smooth_face(i))
    arcface = (SHARED_WEIGHTS / "w600k_mbf.onnx").is_file()
    weights = SHARED_WEIGHTS if arcface else tmp_path / "no-weights"
    done = run_script("bench_idm_model.py", "--hq", str(hq), "--methods", "baseline", "--weights", f"baseline:{tiny_baseline}",
                      "--limit", "2", "--out", str(tmp_path / "out"), "--bands", "--dlib", env={"FACERESTORE_WEIGHTS": str(weights)})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "2 faces from" in out and f"\nmodels: baseline = {tiny_baseline}\n" in out
    rows = table(out, "| set | row | PSNR | SSIM | identity | beats input on PSNR")
    assert [r[:2] for r in rows] == [[s, label] for s in ("mild", "medium", "severe") for label in ("input", "baseline")] + [
        ["authenticity", f"baseline: {name}"] for name in ("f(x) vs x", "f(f(x)) vs f(x)", "f(f(x)) vs x")]
    for r in rows[1:6:2]:  # the method against its input: a paired verdict on 2 faces
        assert re.fullmatch(r"(yes|NO|tie) \([+-]\d+\.\d\d ± \d+\.\d\d, \d/2\)", r[5]), r
        assert (r[6] == "-") != arcface, r
    second = [line for line in out.splitlines() if "second opinion" in line.lower()]
    if "dlib" not in sys.modules and not _importable("dlib"):
        assert second == ["second opinion skipped: dlib is not installed (pip install dlib-bin)"]
    if arcface:
        bands = table(out, "| row | band swap | PSNR gain | identity gain |")
        assert [r[1] for r in bands] == ["output", "output below 64 px only", "input below 64 px + output above",
                                         "input below 128 px + output above", "input below 64 px only"]
        assert all(r[0] == "baseline" for r in bands)
    else:
        assert "not measured (identity column: -): identity (ArcFace) is unavailable" in out
        assert "\nbands skipped: identity (ArcFace) is unavailable" in out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("helper, flag", [("identity_bands.py", "--bands"), ("second_identity.py", "--dlib")])
def test_bench_helpers_run_alone_say_how_to_use_them(helper, flag):
    done = run_script(helper)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"{helper} is a helper of bench_idm_model.py: run "
                                   f"`python bench/bench_idm_model.py --report DIR/results.json {flag}`")

"""Shared training pieces: the stop-at-step-end contract and the bundled recipe's validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facerestore.errors import UsageError
from facerestore.training.loop import StopAtStepEnd, check_settings, read_settings
from facerestore.training.train_baseline import VAL_SEVERITIES, validate


def test_honour_does_nothing_until_a_stop_is_asked_for():
    stop, saved = StopAtStepEnd(enabled=False), []
    stop.honour(5, 3, saved.append, print)
    assert saved == []


@pytest.mark.parametrize("last_saved, expected", [(3, [5]), (5, [])])
def test_honour_saves_the_step_once_then_stops(last_saved, expected):
    stop, saved, said = StopAtStepEnd(enabled=False), [], []
    stop.requested = "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        stop.honour(5, last_saved, saved.append, said.append)
    assert saved == expected
    assert said == ["stopped by SIGTERM after step 5 (checkpoint saved)"]  # the command adds how to go on, once


def _faces(count: int = 2, side: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side] / side
    return [
        np.round(255 * np.clip(np.stack([0.5 + 0.4 * np.sin(6 * xx + k), yy, 0.3 + 0.2 * xx * yy], -1)
                               + rng.normal(0, 0.02, (side, side, 3)), 0, 1)).astype(np.uint8)
        for k in range(count)
    ]


def test_validation_of_the_identity_restorer_reports_input_equal_to_output():
    """restore = identity: output PSNR equals input PSNR per severity, clean is lossless (inf)."""
    calls = []

    def negative_distance(image: np.ndarray, reference: np.ndarray) -> float:
        calls.append(image.shape)
        return -float(np.abs(image - reference).mean())

    report = validate(lambda x: x, _faces(), identity=negative_distance)
    assert list(report) == [*VAL_SEVERITIES, "clean"]
    for name in VAL_SEVERITIES:
        row = report[name]
        assert row["output_psnr"] == pytest.approx(row["input_psnr"], abs=2e-3)
        assert row["output_identity"] == pytest.approx(row["input_identity"], abs=1e-4)
        assert row["input_identity"] < 0
    assert report["clean"]["output_psnr"] == "inf"  # the identity restorer: JSON has no infinity
    json.loads(json.dumps(report, allow_nan=False))  # the card that holds it is strict JSON
    assert report["clean"]["output_identity"] == 0.0
    assert "input_identity" not in report["clean"]
    assert calls and all(shape == (64, 64, 3) for shape in calls)


def test_validation_without_an_identity_scorer_reports_psnr_only():
    report = validate(lambda x: x, _faces(1))
    assert all(set(row) == {"input_psnr", "output_psnr"} for row in report.values())


def test_a_torn_manifest_line_costs_only_itself(tmp_path):
    """kill -9 mid-write leaves '{"path": "b.png", "sta' without a newline; the next record must not
    be glued onto it (that lost it too, and its file was redone)."""
    import json as json_module

    from facerestore.training.loop import open_manifest

    path = tmp_path / "done-rank0.jsonl"
    path.write_text('{"path": "a.png", "status": "ok"}\n{"path": "b.png", "sta')
    with open_manifest(path) as handle:
        handle.write(json_module.dumps({"path": "c.png", "status": "ok"}) + "\n")
    with open_manifest(path) as handle:  # an intact file gets no blank line
        handle.write(json_module.dumps({"path": "d.png", "status": "ok"}) + "\n")
    lines = path.read_text().splitlines()
    assert lines[0] == '{"path": "a.png", "status": "ok"}' and lines[1] == '{"path": "b.png", "sta'
    assert [json_module.loads(line)["path"] for line in lines[2:]] == ["c.png", "d.png"]


@pytest.mark.parametrize("content", [b"{torn", b"[1, 2]", b"\xff\xfe not text"])
def test_an_unreadable_settings_json_is_refused_in_one_line_and_left_as_it_is(tmp_path, content):
    """Not JSON, not an object, not UTF-8: all alike (the last two used to crash check_settings). It
    was passed over, and never rewritten: the folder then took a rerun with any settings, so two
    models could mix in one cleaned tree. Now the rerun stops and says what to do."""
    state = tmp_path / ".state"
    state.mkdir()
    (state / "settings.json").write_bytes(content)
    assert read_settings(state) is None
    with pytest.raises(UsageError) as refused:
        check_settings(state, {"seed": 0}, True, "a cleaning run")
    assert refused.value.one_line() == (
        f"{state / 'settings.json'} is damaged (not a JSON object): it records the settings {tmp_path} was made with; "
        f"if you made it with the options you give now, delete that file and rerun (they are recorded again); else delete {state} to start over")
    assert (state / "settings.json").read_bytes() == content
    (state / "settings.json").unlink()
    check_settings(state, {"seed": 0}, True, "a cleaning run")
    assert read_settings(state) == {"seed": 0}


def test_recorded_settings_are_read_back_and_other_settings_refused(tmp_path):
    state = tmp_path / ".state"
    assert read_settings(state) is None  # none recorded yet
    check_settings(state, {"seed": 1, "size": 512}, True, "a cleaning run")
    assert read_settings(state) == {"seed": 1, "size": 512}
    with pytest.raises(UsageError) as info:
        check_settings(state, {"seed": 0, "size": 512}, True, "a cleaning run")
    assert info.value.one_line().startswith(f"{tmp_path} holds a cleaning run made with other settings (seed: 1 -> 0)")


def test_a_refusal_names_the_weights_files_not_their_records(tmp_path):
    """clean-dataset into a tree begun with another model showed two Python dicts
    ({'path': ..., 'sha256': ...}); it names the files and the start of their sha256."""
    state = tmp_path / ".state"
    first = {"method": "idm", "weights": {"path": "/runs/a/idm.safetensors", "sha256": "5973cd461fa37caa0cb5"}, "steps": None}
    check_settings(state, first, True, "a cleaning run")
    other = {**first, "weights": {"path": "/runs/b/idm.safetensors", "sha256": "86d24d7dd010a5961f95"}, "steps": 20}
    with pytest.raises(UsageError) as info:
        check_settings(state, other, True, "a cleaning run")
    assert info.value.one_line().startswith(
        f"{tmp_path} holds a cleaning run made with other settings (weights: /runs/a/idm.safetensors (sha256 5973cd461fa3) -> "
        "/runs/b/idm.safetensors (sha256 86d24d7dd010), steps: default -> 20); rerun with the same options")
    with pytest.raises(UsageError, match=r"\(weights: /runs/a/idm.safetensors \(sha256 5973cd461fa3\) -> my-idm\)"):
        check_settings(state, {**first, "weights": {"name": "my-idm"}}, True, "a cleaning run")


def test_a_key_one_side_lacks_is_named_as_not_recorded_not_as_default(tmp_path):
    """A settings.json missing a key (hand-edited, or written by an older version) showed it as
    "default", the text of a recorded None; a key only the file has was left out of the list."""
    state = tmp_path / ".state"
    state.mkdir()
    (state / "settings.json").write_text(json.dumps({"seed": 0, "tile": 8}))
    with pytest.raises(UsageError) as info:
        check_settings(state, {"seed": 0, "steps": None}, True, "a cleaning run")
    assert info.value.one_line().startswith(
        f"{tmp_path} holds a cleaning run made with other settings (steps: not recorded -> default, tile: 8 -> not recorded);")

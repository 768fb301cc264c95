"""Weights: catalogue, resolution order, download (resume, checksum), import, offline errors, safe reading."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import pytest
import torch

from facerestore.errors import ChecksumMismatch, UnsupportedCheckpoint, UsageError, WeightsError
from facerestore.weights import catalogue, store
from facerestore.weights.catalogue import WeightsEntry, load_catalogue, official_catalogue
from facerestore.weights.checkpoint import canonical_state_dict, load_strict, read_state_dict, safetensors_metadata, save_safetensors


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).state_dict()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    path = tmp_path / "src" / "tiny.pth"
    path.parent.mkdir()
    torch.save({"params_ema": {f"module.{k}": v for k, v in tiny_state().items()}}, path)
    return path


@pytest.fixture
def use_entry(monkeypatch):
    """Replace the official catalogue with the given entries for one test."""

    def install(*entries: WeightsEntry) -> None:
        monkeypatch.setattr(catalogue, "official_catalogue", lambda: {e.name: e for e in entries})

    return install


def entry_for(path: Path, **kw) -> WeightsEntry:
    fields = dict(name="tiny", filename=path.name, urls=("https://example.invalid/tiny.pth",), sha256=sha(path), size=path.stat().st_size, license="MIT", commercial_use=True)
    fields.update(kw)
    return WeightsEntry(**fields)


def test_official_catalogue_is_complete():
    entries = official_catalogue()
    for name in ("codeformer", "detection_Resnet50_Final", "detection_mobilenet0.25_Final", "parsing_parsenet", "difface_prior", "difface_swinir", "dr2_ddpm", "dr2_sparnethd"):
        assert name in entries
    for entry in entries.values():
        assert entry.license and entry.filename
        assert entry.sha256 == "" or len(entry.sha256) == 64
        assert entry.urls or entry.note, f"{entry.name} needs a URL or a note saying where to get it"
    codeformer = entries["codeformer"]
    assert codeformer.sha256.startswith("1009e537") and codeformer.size == 376637898 and not codeformer.commercial_use
    assert "Baidu" in entries["dr2_ddpm"].note and not entries["dr2_ddpm"].urls
    x2, x4 = entries["realesrgan_x2plus"], entries["realesrgan_x4plus"]  # --bg-upsampler realesrgan / realesrgan-x4
    assert x2.urls == ("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",)
    assert x4.urls == ("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",)
    assert x2.sha256.startswith("49fafd45") and x2.size == 67061725 and x4.sha256.startswith("4fa0d389") and x4.size == 67040989
    assert x2.license.startswith("BSD-3-Clause") and x4.license.startswith("BSD-3-Clause") and x2.commercial_use and x4.commercial_use


def test_canonical_state_dict_unwraps_and_strips_prefix(tiny_file):
    state = read_state_dict(tiny_file)
    assert set(state) == {"weight", "bias"}
    assert torch.equal(state["weight"], tiny_state()["weight"])
    assert set(canonical_state_dict({"state_dict": {"a": torch.zeros(1), "step": 3}})) == {"a"}
    with pytest.raises(UnsupportedCheckpoint, match="not a state dict"):
        canonical_state_dict([1, 2])


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/facerestore-exploit-ran",))


def test_pickled_code_is_never_executed(tmp_path):
    marker = Path("/tmp/facerestore-exploit-ran")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as handle:
        pickle.dump({"weight": Exploit()}, handle)
    with pytest.raises(UnsupportedCheckpoint, match="evil.pth") as info:
        read_state_dict(bad)
    assert "\n" not in info.value.one_line()
    assert "weights_only" not in info.value.one_line()  # torch's advice to load unsafely is not passed on
    assert "holds pickled data other than plain tensors" in info.value.one_line()
    assert not marker.exists()


def test_a_pickled_global_is_named_without_torchs_advice_to_allow_it(tmp_path):
    """torch's refusal goes on "Please use `torch.serialization.add_safe_globals([print])` ...", which
    the line quoted cut mid-sentence: advice to allow-list the global, against the line's own hint."""
    path = tmp_path / "pickle.pth"
    torch.save({"a": 1, "fn": print}, path)
    with pytest.raises(UnsupportedCheckpoint) as info:
        read_state_dict(path)
    assert info.value.one_line() == (f"{path} holds a pickled object (builtins.print), not only tensors; facerestore runs no pickled "
                                     "code: save the weights alone with torch.save(model.state_dict(), FILE)")


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("keep", [0.5, 100], ids=["half", "100-bytes"])
def test_truncated_checkpoint_is_one_line_saying_so(tiny_file, tmp_path, zipped, keep):
    """A copy cut short is said to be one, with what to do, not torch's paragraph about miniz."""
    whole = tmp_path / "whole.pth"
    torch.save(tiny_state(), whole, _use_new_zipfile_serialization=zipped)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(UnsupportedCheckpoint) as info:
        read_state_dict(cut)
    line = info.value.one_line()
    assert line.startswith(f"{cut} is truncated or damaged (") and "\n" not in line, line
    assert "again" in info.value.hint and "miniz" not in line and "weights_only" not in line


@pytest.mark.parametrize("name, data, kind", [
    ("arcface.onnx", b"\x08\x07\x12\x07pytorch\x1a\x032.1" + bytes(range(256)), "an ONNX model"),
    ("model.pth", b"<html>502 Bad Gateway</html>", "a text file"),
    ("model.ckpt", bytes(range(1, 256)), "it starts neither as a zip archive nor as a pickle"),
], ids=["onnx", "web-page", "binary"])
def test_a_file_of_another_format_is_said_to_be_no_checkpoint(tmp_path, name, data, kind):
    """Not 'the safe unpickler refused ... pickled code': nothing in it was pickled."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(UnsupportedCheckpoint) as info:
        read_state_dict(path)
    line = info.value.one_line()
    assert line.startswith(f"{path} is not a PyTorch or safetensors checkpoint ({kind})") and "torch.save" in info.value.hint, line
    assert "pickle" not in str(info.value) or "nor as a pickle" in str(info.value)


def test_a_zip_that_is_no_checkpoint_is_said_to_be_one_not_damaged(tmp_path):
    """A zip of photos saved as model.pth read "truncated or damaged (PytorchStreamReader failed
    locating file data.pkl)": its cure is another file, not another copy of this one."""
    import zipfile

    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("a.png", "b.png", "c.png", "d.png"):
            archive.writestr(f"faces/{name}", b"\x89PNG")
    with pytest.raises(UnsupportedCheckpoint) as info:
        read_state_dict(path)
    assert info.value.one_line().startswith(f"{path} is not a PyTorch or safetensors checkpoint (a zip archive without the data.pkl "
                                            "torch.save writes; it holds faces/a.png, faces/b.png, faces/c.png and 1 more)")
    with zipfile.ZipFile(path, "w"):
        pass
    with pytest.raises(UnsupportedCheckpoint, match=r"checkpoint \(an empty zip archive\)"):
        read_state_dict(path)


def test_load_strict_names_the_file_and_first_mismatches():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    state = {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(2), "x.y": torch.zeros(1)}
    with pytest.raises(UnsupportedCheckpoint) as info:
        load_strict(net, state, "model.pth")
    line = info.value.one_line()
    assert "model.pth" in line and "missing 2: 1.weight, 1.bias" in line and "unexpected 1: x.y" in line
    assert "0.weight (2, 4) != (2, 3)" in line
    before = net[0].weight.clone()
    assert torch.equal(net[0].weight, before)  # nothing was loaded


def test_resolve_from_weights_dir_converts_once(tiny_file, use_entry, monkeypatch, isolated_home):
    use_entry(entry_for(tiny_file))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tiny_file.parent))
    path = store.resolve("tiny")
    assert path.suffix == ".safetensors" and path.is_relative_to(isolated_home)
    assert safetensors_metadata(path)["source_sha256"] == sha(tiny_file)
    assert torch.equal(read_state_dict(path)["bias"], tiny_state()["bias"])
    stamp = path.stat().st_mtime_ns
    assert store.resolve("tiny") == path and path.stat().st_mtime_ns == stamp  # converted once


def test_a_damaged_catalogue_file_gets_the_catalogues_cure_even_where_the_cache_cannot_hold_a_conversion(tmp_path, use_entry, monkeypatch):
    """An entry without a published sha256 is not hash-checked, so a damaged copy reaches the reader;
    where no conversion could be written it was read later by path and got the "your own file"
    advice (export it again from the run that wrote it) instead of the catalogue's."""
    cut = tmp_path / "tiny.pth"
    torch.save(tiny_state(), cut)
    cut.write_bytes(cut.read_bytes()[:100])
    use_entry(entry_for(cut, sha256=""))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tmp_path))
    monkeypatch.delenv("FACERESTORE_OFFLINE")  # online: `weights pull` can fetch it again
    store.cache_dir().mkdir(parents=True)
    (store.cache_dir() / "converted").write_text("a file where the folder goes")  # mkdir fails, as in a read-only cache
    with pytest.raises(UnsupportedCheckpoint) as info:
        store.resolve("tiny")
    assert info.value.one_line().startswith(f"{cut} is truncated or damaged (")
    assert info.value.hint == "delete it and run `facerestore weights pull tiny`"


def test_a_conversion_cut_short_is_made_again(tiny_file, use_entry, monkeypatch, isolated_home):
    use_entry(entry_for(tiny_file))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tiny_file.parent))
    path = store.resolve("tiny")
    whole = path.read_bytes()
    assert store.safetensors_complete(path)
    for damaged in (whole[:-4], whole[:6], b"<html>" * 10):
        path.write_bytes(damaged)
        assert not store.safetensors_complete(path)
        assert store.resolve("tiny") == path and store.safetensors_complete(path)
        assert torch.equal(read_state_dict(path)["bias"], tiny_state()["bias"])


def test_a_damaged_copy_in_a_weights_folder_does_not_hide_a_good_one(tiny_file, use_entry, monkeypatch, tmp_path):
    use_entry(entry_for(tiny_file))
    store.import_file(tiny_file)  # the good copy, in the cache (searched last)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.pth").write_bytes(tiny_file.read_bytes()[:-10])
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    assert torch.equal(read_state_dict(store.resolve("tiny"))["bias"], tiny_state()["bias"])
    good = store.cache_dir() / "tiny.pth"
    size = good.stat().st_size
    cut = f"{size - 10} bytes, not {size}"  # why, as `weights list` says it
    assert list(store.verify_all()) == [("tiny", shared / "tiny.pth", "mismatch", good, cut), ("tiny", good, "ok", None, "")]
    good.write_bytes(b"damaged too")
    with pytest.raises(ChecksumMismatch, match="shared/tiny.pth has sha256"):  # none good: the first copy's error
        store.resolve("tiny")
    assert list(store.verify_all()) == [("tiny", shared / "tiny.pth", "mismatch", None, cut), ("tiny", good, "mismatch", None, f"11 bytes, not {size}")]


def weights_cli(*args: str):
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    return CliRunner().invoke(app, ["weights", *args], catch_exceptions=False)


def test_list_verify_and_loading_name_the_same_copy_past_a_damaged_one(tiny_file, use_entry, monkeypatch, tmp_path):
    """`weights list` named the first file found, a damaged one that loading passes over, and
    `weights verify` named only the good one, saying nothing of the damaged copy in front of it."""
    use_entry(entry_for(tiny_file))
    good = store.import_file(tiny_file)  # in the cache, searched last
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.pth").write_bytes(tiny_file.read_bytes()[:-10])  # cut short: its size alone tells
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    assert store.copy_in_use("tiny") == store.Choice(good, ((shared / "tiny.pth", f"{good.stat().st_size - 10} bytes, not {good.stat().st_size}"),))
    assert store.locate("tiny") == good

    listing = weights_cli("list")
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[1].split("\t")[-1] == str(good.parent)
    assert f"tiny: {shared / 'tiny.pth'} is damaged (" in listing.output
    assert f"; runs pass over it and use the copy in {good.parent}; delete it" in listing.output

    verify = weights_cli("verify")
    assert verify.exit_code == 1  # a damaged file was found, though runs still work
    assert [line.split() for line in verify.output.splitlines()[:2]] == [
        ["tiny", "mismatch", str(shared / "tiny.pth"), "(passed", "over:", str(good), "is", "used)"],
        ["tiny", "ok", str(good)],
    ]
    # then why and what to do, the line `weights list` gives (verify said "mismatch" alone)
    size = good.stat().st_size
    damaged = f"tiny: {shared / 'tiny.pth'} is damaged ({size - 10} bytes, not {size}); runs pass over it and use the copy in {good.parent}; delete it"
    assert verify.output.splitlines()[2:] == [damaged] and damaged in listing.output.splitlines()
    (shared / "tiny.pth").unlink()
    assert weights_cli("verify").exit_code == 0


def test_a_run_that_passes_over_a_damaged_copy_warns_once(tiny_file, use_entry, monkeypatch, tmp_path, capsys):
    """A damaged copy in a FACERESTORE_WEIGHTS folder was passed over in silence when a good one lay
    further on: only `weights list` or `verify` told. Loading now says it once per process, naming the
    damaged copy, the copy used and the cure, with the reason `weights list` gives: a copy cut short
    was "(sha256 mismatch)" in the warning and "(N bytes, not M)" in the listing."""
    monkeypatch.setattr(store, "_warned_passed_over", set())
    use_entry(entry_for(tiny_file))
    good = store.import_file(tiny_file)  # in the cache, searched last
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.pth").write_bytes(tiny_file.read_bytes()[:-10])
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    capsys.readouterr()
    assert store.locate("tiny") == good and store.locate("tiny") == good
    [line] = capsys.readouterr().err.splitlines()
    size = tiny_file.stat().st_size
    assert line == (f"warning: {shared / 'tiny.pth'} (weights 'tiny') is damaged ({size - 10} bytes, not {size}) and is passed over; "
                    f"this run uses {good}; delete it or put a good copy in its place (`facerestore weights verify` checks every copy)")
    assert f"tiny: {shared / 'tiny.pth'} is damaged ({size - 10} bytes, not {size}); runs pass over it" in weights_cli("list").output
    data = bytearray(tiny_file.read_bytes())
    data[-1] ^= 0xFF  # damaged in place, its size kept: only its sha256 tells
    (shared / "tiny.pth").write_bytes(bytes(data))
    monkeypatch.setattr(store, "_warned_passed_over", set())
    assert store.locate("tiny") == good
    assert "(weights 'tiny') is damaged (sha256 mismatch) and is passed over;" in capsys.readouterr().err
    assert f"tiny: {shared / 'tiny.pth'} is damaged (sha256 mismatch); runs pass over it" in weights_cli("list").output
    monkeypatch.setattr(store, "_warned_passed_over", set())
    monkeypatch.setenv("RANK", "1")  # under torchrun rank 0 alone says it
    assert store.locate("tiny") == good and capsys.readouterr().err == ""
    monkeypatch.delenv("RANK")
    (shared / "tiny.pth").write_bytes(tiny_file.read_bytes())  # repaired: nothing to say
    monkeypatch.setattr(store, "_warned_passed_over", set())
    assert store.locate("tiny") == shared / "tiny.pth" and capsys.readouterr().err == ""


def test_a_copy_that_differs_from_a_recorded_first_copy_is_told_how_to_record_its_sha256(tiny_file, use_entry, monkeypatch, tmp_path, capsys):
    """With no published sha256 (DifFace's, DR2's files) the first copy's is recorded; an official copy
    in a FACERESTORE_WEIGHTS folder that differs from it was called damaged, to be deleted, by a run's
    warning and by `weights list`, though it may be the official file and the first copy the wrong
    one. Both now say it differs from the copy recorded earlier and give `weights import --no-verify FILE`."""
    monkeypatch.setattr(store, "_warned_passed_over", set())
    use_entry(entry_for(tiny_file, name="share_only", sha256="", urls=(), note="only on a file share"))
    first = store.import_file(tiny_file)  # the first copy: its sha256 is recorded
    shared = tmp_path / "shared"
    shared.mkdir()
    official = shared / "tiny.pth"
    torch.save({"weight": torch.ones(2, 3), "bias": torch.ones(2)}, official)
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    differs = "differs from the copy recorded earlier (no sha256 is published; the first copy's was recorded)"
    rerecord = (f"if this is the official file and that first copy was not, `facerestore weights import --no-verify {official}` "
                "records its sha256 instead")
    capsys.readouterr()
    assert store.locate("share_only") == first
    [line] = capsys.readouterr().err.splitlines()
    assert line == (f"warning: {official} (weights 'share_only') {differs} and is passed over; this run uses {first}; "
                    f"{rerecord}; else delete it or put a good copy in its place (`facerestore weights verify` checks every copy)")
    listing = weights_cli("list").output
    assert f"share_only: {official} {differs}; runs pass over it and use the copy in {first.parent}; {rerecord}; else delete it\n" in listing
    assert "damaged" not in listing
    verify = weights_cli("verify")  # said "mismatch" alone: now the same reason and cure
    assert verify.exit_code == 1 and verify.output.splitlines()[-1] == (
        f"share_only: {official} {differs}; runs pass over it and use the copy in {first.parent}; {rerecord}; else delete it")

    first.write_bytes(b"x" + first.read_bytes())  # no copy matches the recorded sha256: a run fails
    with pytest.raises(ChecksumMismatch):
        store.locate("share_only")
    assert (f"share_only: {official} {differs}; {rerecord}; else delete it, get the official tiny.pth again (only on a file share) "
            "and run `facerestore weights import tiny.pth`\n") in weights_cli("list").output

    assert weights_cli("import", "--no-verify", str(official)).exit_code == 0  # as told: the official copy's sha256 is recorded
    capsys.readouterr()
    assert store.locate("share_only") == official and capsys.readouterr().err == ""
    assert "differs from the copy recorded earlier" not in weights_cli("list").output


def test_list_hashes_nothing_and_says_which_copy_is_not_checked_yet(tiny_file, use_entry, monkeypatch, tmp_path):
    """A listing reads no checkpoint: a copy damaged in place keeps its size, so until a run or
    `weights verify` hashes it, list names it as the copy a run tries first and says it is unchecked;
    once hashed, list names the good copy loading takes."""
    use_entry(entry_for(tiny_file))
    good = store.import_file(tiny_file)
    shared = tmp_path / "shared"
    shared.mkdir()
    data = bytearray(tiny_file.read_bytes())
    data[-1] ^= 0xFF
    (shared / "tiny.pth").write_bytes(bytes(data))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed")

    with monkeypatch.context() as patched:
        patched.setattr(store, "read_sha256", no_hashing)
        assert store.copy_in_use("tiny") == store.Choice(shared / "tiny.pth", checked=False)
        row = weights_cli("list").output.splitlines()[1].split("\t")
        assert row[-1] == f"{shared} (sha256 not checked yet)"
    assert store.locate("tiny") == good  # loading hashes it and passes over it
    assert store.copy_in_use("tiny") == store.Choice(good, ((shared / "tiny.pth", "sha256 mismatch"),))
    assert weights_cli("list").output.splitlines()[1].split("\t")[-1] == str(good.parent)


def test_list_says_when_every_copy_is_damaged(tiny_file, use_entry, monkeypatch):
    use_entry(entry_for(tiny_file))
    target = store.import_file(tiny_file)
    target.write_bytes(b"cut")
    listing = weights_cli("list")
    assert listing.output.splitlines()[1].split("\t")[-1] == "damaged (below)"
    assert f"tiny: {target} is damaged (3 bytes, not {tiny_file.stat().st_size}); {OFFLINE_CURE}\n" in listing.output  # conftest: offline


def test_list_shows_the_size_of_the_copy_on_disk_and_marks_one_the_catalogue_disagrees_with(tiny_file, use_entry, monkeypatch, tmp_path):
    """The size column was the catalogue's even for a file on disk: '?' for DR2's and DifFace's files
    (no published size), and a wrong or partial copy showed the size it should have had."""
    size = tiny_file.stat().st_size
    use_entry(entry_for(tiny_file, name="unsized", sha256="", size=0),
              entry_for(tiny_file, name="sized", filename="sized.pth", sha256="", size=size + 1),  # a size but no sha256: a run still loads it
              entry_for(tiny_file, name="far", filename="far.pth", sha256="", size=5_000_000),
              entry_for(tiny_file, name="absent", filename="absent.pth", sha256="0" * 64, size=5_000_000))
    store.import_file(tiny_file)
    for name in ("sized.pth", "far.pth"):
        (store.cache_dir() / name).write_bytes(tiny_file.read_bytes())
    rows = {line.split("\t")[0]: line.split("\t")[2] for line in weights_cli("list").output.splitlines()[1:5]}
    assert rows == {"unsized": f"{size / 1e3:.1f} kB", "sized": f"{size} bytes (catalogue: {size + 1} bytes)",
                    "far": f"{size / 1e3:.1f} kB (catalogue: 5.0 MB)", "absent": "5.0 MB"}


def test_list_shows_the_size_of_a_damaged_copy_not_the_catalogues(tiny_file, use_entry, monkeypatch, tmp_path):
    """With every copy damaged the size column showed the catalogue's size (CodeFormer's 376.6 MB for a
    2.7 MB file beside "damaged (below)"): it is the copy on disk's, the catalogue's beside it."""
    size = tiny_file.stat().st_size
    use_entry(entry_for(tiny_file))
    target = store.import_file(tiny_file)
    target.write_bytes(tiny_file.read_bytes()[:300])
    row = weights_cli("list").output.splitlines()[1].split("\t")
    assert (row[2], row[-1]) == (f"300 bytes (catalogue: {size / 1e3:.1f} kB)", "damaged (below)")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tiny.pth").write_bytes(tiny_file.read_bytes())  # a good copy: its size, as the catalogue's
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(shared))
    row = weights_cli("list").output.splitlines()[1].split("\t")
    assert (row[2], row[-1]) == (f"{size / 1e3:.1f} kB", f"{shared} (sha256 not checked yet)")


def test_wrong_hash_is_refused(tiny_file, use_entry, monkeypatch):
    use_entry(entry_for(tiny_file, sha256="0" * 64))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tiny_file.parent))
    monkeypatch.delenv("FACERESTORE_OFFLINE")
    with pytest.raises(ChecksumMismatch, match="tiny.pth has sha256") as info:
        store.resolve("tiny")
    assert info.value.hint == "the file is corrupt or another version: delete it and run `facerestore weights pull tiny`"


OFFLINE_CURE = ("downloads are off, so get a good copy of tiny.pth from https://example.invalid/tiny.pth "
                "and run `facerestore weights import tiny.pth`")


@pytest.mark.parametrize("offline", ["--offline", "FACERESTORE_OFFLINE", "HF_HUB_OFFLINE"])
def test_a_damaged_copy_offline_says_to_import_a_good_one_not_to_pull(tiny_file, use_entry, monkeypatch, offline):
    """`weights pull` cannot download offline: the cure of every catalogue file's damaged copy, found
    by its sha256 or by reading it, says to import a good copy instead."""
    monkeypatch.delenv("FACERESTORE_OFFLINE")
    if offline != "--offline":
        monkeypatch.setenv(offline, "1")
    flag = True if offline == "--offline" else None  # as the CLI passes it: True or unset
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tiny_file.parent))
    use_entry(entry_for(tiny_file, sha256="0" * 64))
    with pytest.raises(ChecksumMismatch) as mismatch:
        store.resolve("tiny", offline=flag)
    assert mismatch.value.hint == f"the file is corrupt or another version: {OFFLINE_CURE}"
    tiny_file.write_bytes(tiny_file.read_bytes()[:100])
    use_entry(entry_for(tiny_file, sha256=""))  # no sha256 to check: reading it finds the damage
    with pytest.raises(UnsupportedCheckpoint) as unreadable:
        store.resolve("tiny", offline=flag)
    assert unreadable.value.one_line().startswith(f"{tiny_file} is truncated or damaged (") and unreadable.value.hint == OFFLINE_CURE


@pytest.mark.parametrize("recorded", [True, False], ids=["sha256-recorded", "no-sha256"])
def test_a_damaged_copy_of_weights_with_no_url_is_to_be_imported_again_not_pulled(tiny_file, use_entry, monkeypatch, tmp_path, recorded):
    """DR2's files are on a file share only: `weights pull` cannot fetch them, so a damaged copy in the
    cache (caught by its recorded sha256, or by reading it when none was recorded) says to import it."""
    note = "only on a Baidu Cloud share (code dr2e)"
    use_entry(entry_for(tiny_file, name="share_only", sha256="", urls=(), note=note))  # not dr2_ddpm: import checks its architecture
    if recorded:
        store.import_file(tiny_file)  # trust on first use records its sha256
        folder = store.cache_dir()
    else:
        folder = tmp_path / "shared"
        folder.mkdir()
        monkeypatch.setenv("FACERESTORE_WEIGHTS", str(folder))
    (folder / "tiny.pth").write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(WeightsError) as info:
        store.resolve("share_only")
    line = info.value.one_line()
    assert str(folder / "tiny.pth") in line and "\n" not in line, line
    assert "`facerestore weights import tiny.pth`" in info.value.hint and note in info.value.hint and "pull" not in line, line


def test_the_official_file_after_a_wrong_first_copy_is_told_how_to_replace_the_recorded_sha256(tiny_file, use_entry, tmp_path, monkeypatch, server):
    """With no published sha256 the first copy's is recorded; the official file imported after a wrong
    first copy was refused with "add --no-verify" in the message and a hint to download it again (which
    the same check refuses), and a run or a download named no way out at all. Each now says how to
    record the official file's sha256 in place of the wrong one: `weights import --no-verify FILE`."""
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    use_entry(entry_for(tiny_file, name="share_only", sha256="", urls=(), note="only on a file share"))
    store.import_file(tiny_file)  # the wrong first copy: its sha256 is recorded
    official = tmp_path / "official" / "tiny.pth"
    official.parent.mkdir()
    torch.save({"weight": torch.ones(2, 3)}, official)
    cure = "if this is the official file and that first copy was not, `facerestore weights import --no-verify {}` records its sha256 instead"
    with pytest.raises(ChecksumMismatch) as refused:
        store.import_weights(official)
    line = refused.value.one_line()
    assert str(refused.value).endswith(" (recorded from its first copy, as no sha256 is published)") and "add --no-verify" not in line
    assert refused.value.hint == cure.format(official) + "; else get the official file, or register this one as your own weights with --name NAME"

    cached = store.cache_dir() / "tiny.pth"
    cached.write_bytes(official.read_bytes())  # put in place by hand: a run refuses it
    with pytest.raises(ChecksumMismatch) as run:
        store.resolve("share_only")
    assert run.value.hint.startswith(cure.format(cached) + "; else delete it, get the official tiny.pth again (only on a file share)")
    result = CliRunner().invoke(app, ["weights", "import", "--no-verify", str(cached)])  # as the hint says
    assert result.exit_code == 0, result.output
    assert store.expected_sha256(catalogue.get_entry("share_only")) == sha(official) and store.resolve("share_only")

    RangeHandler.payload, RangeHandler.honour_range = tiny_file.read_bytes(), True  # the other way round: a download after a wrong copy
    use_entry(entry_for(tiny_file, name="share_only", sha256="", urls=(server,)))
    cached.unlink()
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    with pytest.raises(ChecksumMismatch) as download:
        store.resolve("share_only")
    assert download.value.hint.endswith("(the expected sha256 was recorded from its first copy, as no sha256 is published: if that copy was wrong, "
                                        "get the official file and run `facerestore weights import --no-verify tiny.pth`, which records its sha256 instead)")


def test_offline_missing_file_names_file_url_sha_and_import(tiny_file, use_entry):
    use_entry(entry_for(tiny_file))
    with pytest.raises(WeightsError) as info:
        store.resolve("tiny", offline=True)
    line = info.value.one_line()
    for part in ("tiny.pth", "https://example.invalid/tiny.pth", sha(tiny_file), "facerestore weights import tiny.pth"):
        assert part in line
    assert "\n" not in line


def test_offline_from_environment(tiny_file, use_entry, monkeypatch):
    use_entry(entry_for(tiny_file))
    monkeypatch.delenv("FACERESTORE_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        store.resolve("tiny")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload, honouring `Range: bytes=N-` unless told to ignore it."""

    payload = b""
    honour_range = True
    requests: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server API
        wanted = self.headers.get("Range")
        type(self).requests.append(wanted)
        start = int(wanted.split("=")[1].rstrip("-")) if wanted and self.honour_range else 0
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/tiny.pth"
    httpd.shutdown()


@pytest.mark.parametrize("honour_range", [True, False])
def test_download_resumes_checks_and_renames(tiny_file, use_entry, server, isolated_home, monkeypatch, honour_range):
    RangeHandler.payload = tiny_file.read_bytes()
    RangeHandler.honour_range = honour_range
    use_entry(entry_for(tiny_file, urls=(server,)))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    part = store.cache_dir() / "tiny.pth.part"
    part.parent.mkdir(parents=True)
    half = len(RangeHandler.payload) // 2
    part.write_bytes(RangeHandler.payload[:half])  # an interrupted earlier download
    seen = []
    path = store.resolve("tiny", progress=lambda done, total: seen.append((done, total)))
    assert RangeHandler.requests == [f"bytes={half}-"]
    assert (store.cache_dir() / "tiny.pth").read_bytes() == RangeHandler.payload
    assert not part.exists() and path.suffix == ".safetensors"
    assert seen[-1] == (len(RangeHandler.payload), len(RangeHandler.payload))


def test_weights_pull_replaces_a_damaged_copy_a_run_refuses(tiny_file, use_entry, server, isolated_home, monkeypatch, tmp_path):
    """A damaged copy in a FACERESTORE_WEIGHTS share that cannot be deleted made `weights pull`, the
    cure every run names, fail as the run did: pull downloads a good copy into the cache, which
    later runs use past the damaged one."""
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    RangeHandler.payload = tiny_file.read_bytes()
    RangeHandler.honour_range = True
    use_entry(entry_for(tiny_file, urls=(server,)))
    share = tmp_path / "share"
    share.mkdir()
    (share / "tiny.pth").write_bytes(RangeHandler.payload[:-10] + b"x" * 10)  # same size, other bytes
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(share))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    with pytest.raises(ChecksumMismatch):  # a run names the cure and downloads nothing
        store.resolve("tiny")
    assert RangeHandler.requests == []
    result = CliRunner().invoke(app, ["weights", "pull", "tiny"])
    assert result.exit_code == 0, result.output
    assert RangeHandler.requests == [None]
    assert (store.cache_dir() / "tiny.pth").read_bytes() == RangeHandler.payload
    assert store.locate("tiny") == store.cache_dir() / "tiny.pth"  # runs now use it, past the damaged copy
    assert (share / "tiny.pth").exists()  # the share is never written


@pytest.mark.parametrize("published", [True, False])
def test_a_download_is_read_once_to_hash_it(tiny_file, use_entry, server, isolated_home, monkeypatch, published):
    """The `.part` is hashed, then renamed: its first use (the check, the safetensors conversion's
    source hash) reuses that hash instead of reading a multi-GB file again."""
    RangeHandler.payload = tiny_file.read_bytes()
    RangeHandler.honour_range = True
    use_entry(entry_for(tiny_file, urls=(server,), sha256=sha(tiny_file) if published else ""))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    hashes = []
    real_sha256 = store.hashlib.sha256
    monkeypatch.setattr(store.hashlib, "sha256", lambda *a: hashes.append(1) or real_sha256(*a))
    store.resolve("tiny")
    assert len(hashes) == 1


def test_download_with_wrong_content_leaves_nothing(tiny_file, use_entry, server, monkeypatch):
    RangeHandler.payload = b"not the checkpoint"
    RangeHandler.honour_range = True
    use_entry(entry_for(tiny_file, urls=(server,)))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    with pytest.raises(ChecksumMismatch, match="downloaded tiny.pth"):
        store.resolve("tiny")
    assert list(store.cache_dir().iterdir()) == []


class ShortHandler(RangeHandler):
    """Announces the whole payload, sends half of it and closes (a dropped connection)."""

    def do_GET(self):  # noqa: N802 - http.server API
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])


def test_a_cut_off_download_is_kept_to_resume_and_never_stored(tiny_file, use_entry, monkeypatch):
    """With no published sha256 a cut-off file used to be stored and its hash trusted for good."""
    ShortHandler.payload = tiny_file.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ShortHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        use_entry(entry_for(tiny_file, sha256="", urls=(f"http://127.0.0.1:{httpd.server_address[1]}/tiny.pth",)))
        monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
        with pytest.raises(WeightsError, match="closed after"):
            store.resolve("tiny")
    finally:
        httpd.shutdown()
    assert not (store.cache_dir() / "tiny.pth").exists() and (store.cache_dir() / "tiny.pth.part").is_file()
    assert store.expected_sha256(catalogue.get_entry("tiny")) == ""


def test_an_error_page_for_an_unpublished_hash_is_never_stored_or_trusted(tiny_file, use_entry, server, monkeypatch):
    RangeHandler.payload = b"<html>rate limited</html>"
    RangeHandler.honour_range = True
    use_entry(entry_for(tiny_file, sha256="", urls=(server,)))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    with pytest.raises(WeightsError) as info:
        store.resolve("tiny")
    assert info.value.one_line().endswith(" is not a PyTorch or safetensors checkpoint (a text file); nothing was stored; get the whole official file and try again")
    assert list(store.cache_dir().iterdir()) == [] and store.expected_sha256(catalogue.get_entry("tiny")) == ""
    RangeHandler.payload = tiny_file.read_bytes()  # the server works again: the right file is taken
    assert store.resolve("tiny").is_file() and store.expected_sha256(catalogue.get_entry("tiny")) == sha(tiny_file)


def test_download_unreachable_is_one_line(tiny_file, use_entry, monkeypatch):
    use_entry(entry_for(tiny_file, urls=("http://127.0.0.1:9/tiny.pth",)))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    with pytest.raises(WeightsError, match="could not be downloaded") as info:
        store.resolve("tiny")
    assert "weights import tiny.pth" in info.value.one_line()


def test_unpublished_hash_is_recorded_on_first_fetch(tiny_file, use_entry):
    use_entry(entry_for(tiny_file, sha256=""))
    store.import_file(tiny_file)
    assert store.expected_sha256(catalogue.get_entry("tiny")) == sha(tiny_file)
    other = tiny_file.with_name("other") / "tiny.pth"
    other.parent.mkdir()
    torch.save({"x": torch.ones(1)}, other)
    with pytest.raises(ChecksumMismatch):
        store.import_file(other)


def test_a_name_of_another_models_published_checkpoint_is_refused_before_any_download(tiny_file, use_entry, monkeypatch):
    use_entry(entry_for(tiny_file), entry_for(tiny_file, name="other", filename="other.pth"))
    monkeypatch.setattr(store, "download", lambda *a, **k: pytest.fail("nothing may be downloaded"))
    with pytest.raises(WeightsError, match="--weights other names the published checkpoint of another model") as info:
        store.resolve("tiny", explicit="other")
    assert "the catalogued tiny" in info.value.one_line()
    with pytest.raises(WeightsError, match="published checkpoint of another model"):
        store.resolve_explicit("tiny", catalogued=())  # baseline and idm have no published checkpoint
    store.import_file(tiny_file)
    assert store.resolve("tiny", explicit="tiny") == store.resolve("tiny")
    assert store.resolve_explicit("tiny") == store.resolve("tiny")  # metrics take any catalogued name


def test_explicit_weights_errors_name_the_option_they_came_from(tiny_file, use_entry, tmp_path):
    """`finetune --base-weights/--prior-weights` pass their option's name; everything else says --weights."""
    use_entry(entry_for(tiny_file), entry_for(tiny_file, name="other", filename="other.pth"))
    missing = tmp_path / "missing.pth"
    with pytest.raises(WeightsError, match=f"^--weights {missing}: no such file"):
        store.resolve("tiny", explicit=missing)
    with pytest.raises(WeightsError, match=f"^--prior-weights {missing}: no such file"):
        store.resolve("tiny", explicit=missing, option="--prior-weights")
    with pytest.raises(WeightsError, match=f"^--base-weights {tmp_path} is a folder"):
        store.resolve_explicit(tmp_path, option="--base-weights")
    with pytest.raises(WeightsError, match="^--base-weights other names the published checkpoint of another model"):
        store.resolve("tiny", explicit="other", option="--base-weights")


@pytest.mark.parametrize("method", ["baseline", "codeformer", "difface", "dr2", "idm"])
def test_a_methods_own_weights_errors_name_the_option_its_caller_gives(tmp_path, method):
    """restore, evaluate and clean-dataset leave MethodOptions.weights_option at --weights; `finetune
    pseudo-targets --base METHOD` passes --base-weights, also to the methods that resolve several files."""
    import re

    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method

    missing = tmp_path / "missing.pth"
    with pytest.raises(WeightsError, match=f"^--weights {re.escape(str(missing))}: no such file"):
        build_method(method, MethodOptions(weights=missing))
    with pytest.raises(WeightsError, match=f"^--base-weights {re.escape(str(missing))}: no such file"):
        build_method(method, MethodOptions(weights=missing, weights_option="--base-weights"))
    if method in ("difface", "dr2"):  # their ROLE=FILE syntax
        with pytest.raises(UsageError, match=r"^--base-weights 'nope=x\.pth': unknown role 'nope'"):
            build_method(method, MethodOptions(weights="nope=x.pth", weights_option="--base-weights"))


@pytest.mark.parametrize("method, value", [
    ("baseline", "my-cf"), ("codeformer", "my-cf"), ("difface", "prior=my-cf,swinir=my-cf"), ("dr2", "ddpm=my-cf,enhancer=my-cf"), ("idm", "my-cf"),
])
def test_a_methods_loader_names_a_registered_pth_by_its_stored_file_and_name_not_its_conversion(tmp_path, method, value):
    """A registered .pth is loaded from its safetensors conversion in cache/converted/ (a hashed name
    the user never saw): every method's error names the stored file and the registered name instead."""
    from facerestore.errors import BadWeightsFile
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method

    small = tmp_path / "small.pth"
    torch.save({"a": torch.zeros(3)}, small)
    store.import_file(small, name="my-cf")
    with pytest.raises(BadWeightsFile) as info:
        build_method(method, MethodOptions(weights=value))
    line = info.value.one_line()
    assert line.startswith(f"--weights: {store.cache_dir() / 'my-cf.pth'} (your weights 'my-cf') ") and "converted" not in line, line
    assert "\n" not in line


@pytest.mark.parametrize("method, value", [
    ("baseline", "my-st"), ("difface", "prior=my-st,swinir=my-st"), ("idm", "my-st"),
])
def test_a_methods_loader_names_a_registered_safetensors_by_its_stored_file_and_name(tmp_path, method, value):
    """A registered .safetensors is loaded as stored (no conversion): its errors name the weights
    too, as a registered .pth's do (docs/weights.md promises the name in every such error)."""
    from facerestore.errors import BadWeightsFile
    from facerestore.methods.base import MethodOptions
    from facerestore.methods.registry import build_method

    small = tmp_path / "small.safetensors"
    save_safetensors({"a": torch.zeros(3)}, small)
    store.import_file(small, name="my-st")
    with pytest.raises(BadWeightsFile) as info:
        build_method(method, MethodOptions(weights=value))
    line = info.value.one_line()
    assert line.startswith(f"--weights: {store.cache_dir() / 'my-st.safetensors'} (your weights 'my-st') "), line


def test_display_name_names_a_stored_file_only_where_the_store_keeps_it(tmp_path):
    """The same file name outside the cache is just a file the user passed: no weights name."""
    small = tmp_path / "my-st.safetensors"
    save_safetensors({"a": torch.zeros(3)}, small)
    stored = store.import_file(small, name="my-st")
    assert store.display_name(stored) == f"{stored} (your weights 'my-st')"
    assert store.display_name(small) == str(small)


def test_display_name_finds_the_copy_a_conversion_was_made_from(tiny_file, use_entry, monkeypatch):
    """A catalogue file in a FACERESTORE_WEIGHTS folder is named there; a conversion whose source is
    gone keeps the "converted from" form; any other file is named as given."""
    use_entry(entry_for(tiny_file))
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(tiny_file.parent))
    converted = store.resolve("tiny")
    assert store.display_name(converted) == f"{tiny_file} (weights 'tiny')"
    monkeypatch.delenv("FACERESTORE_WEIGHTS")
    assert store.display_name(converted) == f"{converted} (converted from tiny.pth)"
    assert store.display_name(tiny_file) == str(tiny_file)


def test_import_checks_hash_and_registers_own_weights(tiny_file, use_entry, tmp_path):
    use_entry(entry_for(tiny_file))
    target = store.import_file(tiny_file)
    assert target == store.cache_dir() / "tiny.pth" and sha(target) == sha(tiny_file)
    assert [line.status for line in store.verify_all()] == ["ok"]

    mine = tmp_path / "finetuned.pth"
    torch.save({"params_ema": tiny_state()}, mine)
    with pytest.raises(UsageError, match="matches no catalogued checkpoint"):
        store.import_file(mine)
    store.import_file(mine, name="my-model")
    assert load_catalogue()["my-model"].local
    assert torch.equal(read_state_dict(store.resolve("my-model"))["weight"], tiny_state()["weight"])
    assert store.resolve_explicit("my-model") == store.resolve("my-model")
    with pytest.raises(WeightsError, match="no such file"):
        store.resolve_explicit("nope")
    stored = store.cache_dir() / load_catalogue()["my-model"].filename
    stored.write_bytes(stored.read_bytes()[:-8])  # damaged in the cache
    with pytest.raises(ChecksumMismatch) as damaged:
        store.resolve("my-model")
    assert "facerestore weights import FILE --name my-model" in damaged.value.one_line() and "pull" not in damaged.value.one_line()


def test_an_official_file_with_no_published_sha256_under_another_name(tiny_file, use_entry, tmp_path):
    """DR2's and DifFace's files have no published sha256, so a copy saved under another name
    ("DR2_FFHQ (1).pkl") matched nothing. Its key layout would only tell the architecture (a fine-tune
    has the same), so it is not guessed: the refusal names the file name each such entry is recognised
    by; once a copy was accepted, its recorded sha256 recognises the same bytes under any name."""
    published = tmp_path / "published.pth"
    torch.save({"weight": torch.ones(2, 3)}, published)
    use_entry(entry_for(tiny_file, sha256=""), entry_for(published, name="pub", filename="pub.pth"))
    renamed = tmp_path / "tiny (1).pth"
    renamed.write_bytes(tiny_file.read_bytes())
    with pytest.raises(UsageError) as info:
        store.import_weights(renamed)
    assert info.value.one_line() == (f"{renamed} matches no catalogued checkpoint (by sha256 or file name); if it is an official file "
                                     "with no published sha256, give it its official name and import it again: tiny.pth (tiny); "
                                     "else register it as your own weights with `--name NAME`")
    assert not store.cache_dir().exists()

    store.import_weights(tiny_file)  # by its file name: trusted on first use, its sha256 recorded
    target = store.cache_dir() / "tiny.pth"
    assert store.import_weights(renamed) == store.Imported(target, "tiny", unchanged=True, official=True)
    target.unlink()
    assert store.import_weights(renamed) == store.Imported(target, "tiny", official=True) and sha(target) == sha(tiny_file)


def test_with_every_sha256_published_the_refusal_only_offers_a_name_of_your_own(tiny_file, use_entry, tmp_path):
    use_entry(entry_for(tiny_file))
    mine = tmp_path / "mine.pth"
    torch.save({"weight": torch.ones(2, 3)}, mine)
    with pytest.raises(UsageError) as info:
        store.import_weights(mine)
    assert info.value.hint == "register it as your own weights with `--name NAME`"


def test_import_of_a_folder_or_a_missing_file_is_a_usage_error(tmp_path):
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    runner = CliRunner()
    folder = runner.invoke(app, ["weights", "import", str(tmp_path)], catch_exceptions=False)
    assert folder.exit_code == 2 and f"{tmp_path} is a folder, not a checkpoint file" in folder.output
    missing = runner.invoke(app, ["weights", "import", str(tmp_path / "nope.pth")], catch_exceptions=False)
    assert missing.exit_code == 2 and "nope.pth does not exist" in missing.output


def test_import_refuses_what_is_not_a_checkpoint(tiny_file, use_entry, tmp_path):
    use_entry(entry_for(tiny_file, sha256=""))
    page = tmp_path / "tiny.pth"
    page.write_text("<html>not found</html>")
    with pytest.raises(WeightsError, match=r"is not a PyTorch or safetensors checkpoint \(a text file\)"):
        store.import_file(page)  # trust on first use would have recorded this page's hash
    with pytest.raises(WeightsError, match=r"is not a PyTorch or safetensors checkpoint \(a text file\)"):
        store.import_file(page, name="mine")
    assert not store.cache_dir().exists() or list(store.cache_dir().iterdir()) == []


def test_list_claims_no_license_for_weights_of_your_own(tiny_file):
    """Weights imported with --name showed "your own weights non-commercial": a model you train carries
    your data's license (docs/weights.md), which the tool cannot know. Catalogue entries keep theirs."""
    store.import_file(tiny_file, name="my-base")
    listing = weights_cli("list")
    assert listing.exit_code == 0, listing.output
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.output.splitlines() if "\t" in line}
    assert rows["my-base"][3] == "your own weights", rows["my-base"]
    assert rows["codeformer"][3] == "NTU S-Lab License 1.0 non-commercial", rows["codeformer"]
    assert rows["detection_mobilenet0.25_Final"][3] == "MIT", rows["detection_mobilenet0.25_Final"]


def test_import_of_a_file_that_is_no_checkpoint_exits_2_with_or_without_a_name(tiny_file, use_entry, tmp_path):
    """The FILE `weights import` was given is as wrong as a bad `--weights` file: the command line must
    change (docs/usage.md's exit codes). With --name it exited 1, without it 2."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(bytes(torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist()))
    named = weights_cli("import", str(junk), "--name", "my-idm")
    assert named.exit_code == 2, named.output
    assert f"{junk} is not a PyTorch or safetensors checkpoint (it starts neither as a zip archive nor as a pickle); nothing was stored" in named.output
    unnamed = weights_cli("import", str(junk))
    assert unnamed.exit_code == 2 and f"{junk} matches no catalogued checkpoint" in unnamed.output, unnamed.output
    use_entry(entry_for(tiny_file, filename="junk.pth", sha256=""))  # an official file with no published hash: read before it is trusted
    official = weights_cli("import", str(junk))
    assert official.exit_code == 2 and "nothing was stored; get the whole official file and try again" in official.output, official.output
    cut = tmp_path / "cut.pth"
    cut.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    truncated = weights_cli("import", str(cut), "--name", "my-cut")
    assert truncated.exit_code == 2 and f"{cut} is not a readable checkpoint (" in truncated.output, truncated.output
    assert not store.cache_dir().exists() or not list(store.cache_dir().glob("*.pth"))


def test_a_file_of_your_own_that_is_no_checkpoint_is_not_said_to_be_truncated(tmp_path):
    """`weights import some.jpg --name pic` was told to copy the whole file again, the cure of a cut
    copy: it is said to be no checkpoint at all, in the words `--weights` uses for it."""
    picture = tmp_path / "some.jpg"
    picture.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)))
    with pytest.raises(WeightsError) as info:
        store.import_file(picture, name="pic")
    assert info.value.one_line() == (f"{picture} is not a PyTorch or safetensors checkpoint (it starts neither as a zip archive nor as a pickle); "
                                     "nothing was stored; pass a checkpoint saved with torch.save (.pth, .pt, .ckpt) or a .safetensors file")
    assert not store.cache_dir().exists() or list(store.cache_dir().iterdir()) == []


def test_a_truncated_file_of_your_own_is_to_be_copied_or_exported_again_not_fetched_officially(tiny_file, use_entry, tmp_path):
    """`--name` imports your own weights: no official file replaces them. The official file's cure is
    only for a catalogue file whose hash nobody published (trusted on first use, so read first)."""
    cut = tmp_path / "trunc.pth"
    cut.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(WeightsError) as own:
        store.import_file(cut, name="t2")
    line = own.value.one_line()
    assert line.startswith(f"{cut} is not a readable checkpoint (") and "official" not in line, line
    assert line.endswith("; nothing was stored; copy the whole file again, or export it again from the run that wrote it, then import it")
    use_entry(entry_for(tiny_file, name="tiny", filename="trunc.pth", sha256=""))
    with pytest.raises(WeightsError) as official:
        store.import_file(cut)
    assert official.value.hint == "nothing was stored; get the whole official file and try again"


def test_importing_another_file_under_your_name_replaces_it_and_deletes_the_file_it_replaced(tiny_file, tmp_path):
    """A re-import under the same --name left the earlier file (a 376 MB my-cf.safetensors) in the
    cache, registered by nothing, invisible to `weights list` and `verify`. Now the newer file
    replaces it and the earlier one, and its conversion, are deleted; the same bytes change nothing."""
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    first = save_safetensors(tiny_state(), tmp_path / "first.safetensors")
    second, third = tmp_path / "second.pth", tmp_path / "third.pth"
    torch.save({"weight": torch.ones(2, 3)}, second)
    torch.save({"weight": torch.zeros(2, 3)}, third)
    cache = store.cache_dir()

    def files() -> list[str]:
        return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())

    made = store.import_weights(first, name="my-cf")
    assert made == store.Imported(cache / "my-cf.safetensors", "my-cf") and files() == ["my-cf.safetensors"]
    result = CliRunner().invoke(app, ["weights", "import", str(second), "--name", "my-cf"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"imported {second} -> {cache / 'my-cf.pth'}, replacing your earlier weights 'my-cf' "
                                     f"(its file {cache / 'my-cf.safetensors'} is deleted)")
    assert files() == ["my-cf.pth"] and list(store.verify_all())[-1] == ("my-cf", cache / "my-cf.pth", "ok", None, "")
    store.resolve("my-cf")  # its conversion, in converted/
    assert files() == [f"converted/my-cf-{sha(second)[:16]}.safetensors", "my-cf.pth"]

    replaced = store.import_weights(third, name="my-cf")  # the same file name: overwritten, its old conversion deleted
    assert replaced == store.Imported(cache / "my-cf.pth", "my-cf", replaced=True) and files() == ["my-cf.pth"]
    assert torch.equal(read_state_dict(store.resolve("my-cf"))["weight"], torch.zeros(2, 3))
    stamp = (cache / "my-cf.pth").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["weights", "import", str(third), "--name", "my-cf"])
    assert result.exit_code == 0 and result.output.strip() == f"{third} is already your weights 'my-cf' ({cache / 'my-cf.pth'}); nothing changed"
    assert (cache / "my-cf.pth").stat().st_mtime_ns == stamp
    result = CliRunner().invoke(app, ["weights", "import", str(third)])  # recognised by its sha256: still yours
    assert result.exit_code == 0 and result.output.strip() == f"{third} is already your weights 'my-cf' ({cache / 'my-cf.pth'}); nothing changed"


@pytest.mark.parametrize("published", [True, False], ids=["catalogued-sha256", "recorded-on-first-use"])
def test_importing_an_official_file_already_in_the_cache_changes_nothing(tiny_file, use_entry, tmp_path, monkeypatch, published):
    """The official file imported again (a second download of codeformer.pth) was copied again, 377 MB
    for nothing; now the same bytes are noticed and the line says nothing changed, as for your own."""
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    use_entry(entry_for(tiny_file, sha256="" if published is False else sha(tiny_file)))
    first = store.import_weights(tiny_file)
    target = store.cache_dir() / "tiny.pth"
    assert first == store.Imported(target, "tiny", official=True)
    stamp = target.stat().st_mtime_ns
    again = tmp_path / "again" / "tiny.pth"  # another copy of the same bytes
    again.parent.mkdir()
    again.write_bytes(tiny_file.read_bytes())
    copy = store._copy_atomic
    monkeypatch.setattr(store, "_copy_atomic", lambda *a: pytest.fail("the same bytes must not be copied again"))
    assert store.import_weights(again) == store.Imported(target, "tiny", unchanged=True, official=True)
    result = CliRunner().invoke(app, ["weights", "import", str(again)])
    assert result.exit_code == 0 and result.output.strip() == f"{again} is already the official weights 'tiny' ({target}); nothing changed", result.output
    assert target.stat().st_mtime_ns == stamp
    monkeypatch.setattr(store, "_copy_atomic", copy)
    if not published:  # other bytes with --no-verify still replace a file whose hash was only recorded
        torch.save({"weight": torch.ones(2, 3)}, again)
        assert store.import_weights(again, verify=False) == store.Imported(target, "tiny", official=True)
        assert sha(target) == sha(again) and store.expected_sha256(catalogue.get_entry("tiny")) == sha(again)


def test_verified_json_forgets_files_deleted_or_replaced_since(tmp_path):
    """verified.json kept a key for every file ever hashed (each download's source, every file an
    import replaced): those that are gone or changed are dropped whenever it is written."""
    import json

    def remembered() -> set[str]:
        return {key.rsplit("|", 2)[0] for key in json.loads(store._memo_path().read_text())}

    gone, changed, kept, odd = (tmp_path / name for name in ("gone.pth", "changed.pth", "kept.pth", "a|b.pth"))
    for path in (gone, changed, kept, odd):
        path.write_bytes(path.name.encode())
        store.sha256_file(path)
    assert remembered() == {str(p.resolve()) for p in (gone, changed, kept, odd)}
    gone.unlink()
    changed.write_bytes(b"other bytes, another size")
    new = tmp_path / "new.pth"
    new.write_bytes(b"new")
    store.sha256_file(new)  # any write prunes
    assert remembered() == {str(p.resolve()) for p in (kept, odd, new)}
    assert store.sha256_file(changed) == sha(changed)  # hashed again, not the stale answer


def test_a_reimport_under_your_name_forgets_the_hash_of_the_file_it_deleted(tiny_file, tmp_path):
    import json

    first = save_safetensors(tiny_state(), tmp_path / "first.safetensors")
    store.import_weights(first, name="my-cf")
    stored = store.cache_dir() / "my-cf.safetensors"
    store.resolve("my-cf")  # hashed on use: remembered
    assert any(key.startswith(f"{stored.resolve()}|") for key in json.loads(store._memo_path().read_text()))
    assert store.import_weights(tiny_file, name="my-cf").deleted == stored
    memo = json.loads(store._memo_path().read_text())
    assert not any(key.startswith(f"{stored.resolve()}|") for key in memo) and memo, memo


def test_registered_names_survive_quotes_in_file_names_and_are_readable_by_others(tiny_file, tmp_path):
    odd = tmp_path / 'my "best" \\ model.pth'
    odd.write_bytes(tiny_file.read_bytes())
    old = os.umask(0o022)
    try:
        target = store.import_file(odd, name="best")
    finally:
        os.umask(old)
    assert load_catalogue()["best"].local and store.resolve("best").is_file()  # the registry still parses
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: a shared cache stays usable


def test_a_name_that_ends_in_the_files_suffix_does_not_get_it_twice(tiny_file, tmp_path):
    target = store.import_file(tiny_file, name="best.pth")
    assert target == store.cache_dir() / "best.pth" and load_catalogue()["best.pth"].filename == "best.pth"
    assert store.resolve("best.pth") == store.cache_dir() / "converted" / f"best.pth-{sha(tiny_file)[:16]}.safetensors"
    upper = tmp_path / "TINY.PTH"
    upper.write_bytes(tiny_file.read_bytes())
    assert store.import_file(upper, name="other.pth").name == "other.pth"  # the suffix compared in any case
    # the official file's own name: refused (it would shadow the catalogue's file), with the way to import it as that
    with pytest.raises(UsageError) as info:
        store.import_file(tiny_file, name="codeformer.pth")
    assert info.value.one_line().startswith("--name codeformer.pth is taken by the catalogued checkpoint codeformer (codeformer.pth)")
    assert "to import the official file, pass no --name" in info.value.hint


def test_a_file_name_that_is_not_utf8_is_registered(tiny_file, tmp_path):
    """Linux file names are bytes: one that is not UTF-8 put a lone surrogate into the registry's note,
    and writing it ended in a UnicodeEncodeError traceback."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/w\xff.pth"))
    odd.write_bytes(tiny_file.read_bytes())
    store.import_file(odd, name="mine")
    assert load_catalogue()["mine"].local and store.resolve("mine").is_file()
    assert "imported from w\\\\udcff.pth" in catalogue.local_registry_path().read_text(encoding="utf-8")


def test_a_registry_write_that_fails_midway_leaves_the_old_registry_whole(tiny_file, tmp_path, monkeypatch):
    """The registry of your own weights was rewritten in place: a full disk (or a crash) midway left
    half a local_weights.toml, and every registered name was lost. Now it is replaced whole or not at all."""
    import errno

    first = tmp_path / "first.pth"
    first.write_bytes(tiny_file.read_bytes())
    store.import_file(first, name="first")
    registry = catalogue.local_registry_path()
    before = registry.read_text(encoding="utf-8")
    real_write_text = Path.write_text

    def half_then_full(self: Path, text: str, *args, **kwargs) -> int:
        if registry.name not in self.name:
            return real_write_text(self, text, *args, **kwargs)
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    second = tmp_path / "second.pth"
    second.write_bytes(tiny_file.read_bytes())
    with monkeypatch.context() as patched, pytest.raises(WeightsError) as failed:
        patched.setattr(Path, "write_text", half_then_full)
        store.import_file(second, name="second")
    assert failed.value.one_line() == (f"cannot write {registry} (No space left on device); 'second' is not registered; "
                                       "free some disk space or point FACERESTORE_HOME elsewhere, then import it again")
    assert registry.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in registry.parent.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert load_catalogue()["first"].local and "second" not in load_catalogue()


def test_safetensors_are_recognised_by_content_and_unwrapped(tmp_path):
    path = save_safetensors({"module.weight": torch.ones(2, 3)}, tmp_path / "model.safetensors")
    renamed = tmp_path / "model.PTH"
    renamed.write_bytes(path.read_bytes())
    for source in (path, renamed):
        assert list(read_state_dict(source)) == ["weight"]


def test_verify_reports_mismatch(tiny_file, use_entry):
    use_entry(entry_for(tiny_file))
    target = store.import_file(tiny_file)
    target.write_bytes(b"corrupted")
    assert [line.status for line in store.verify_all()] == ["mismatch"]


def test_verify_rereads_a_file_damaged_in_place(tiny_file, use_entry):
    """Bit rot or a tool that restores timestamps keeps size and mtime: only reading the bytes finds it."""
    use_entry(entry_for(tiny_file))
    target = store.import_file(tiny_file)
    assert [line.status for line in store.verify_all()] == ["ok"]  # hashed and remembered
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [line.status for line in store.verify_all()] == ["mismatch"]


def test_saved_safetensors_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    """Exported models are normal user files (shareable on a cluster), though written via a temp file."""
    old = os.umask(0o022)
    try:
        path = save_safetensors({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert read_state_dict(path)["w"].tolist() == [1.0, 1.0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_import_name_never_takes_a_catalogued_checkpoint_file(tiny_file, use_entry, tmp_path):
    use_entry(entry_for(tiny_file, filename="x.pth"))  # the official 'tiny' is stored as x.pth
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.ones(2, 3)}, other)
    with pytest.raises(UsageError, match=r"^--name x is taken by the catalogued checkpoint tiny \(x\.pth\)"):
        store.import_file(other, name="x")
    assert not (store.cache_dir() / "x.pth").exists()


BY_SHA256 = "; to import the official file, pass no --name (it is recognised by sha256 or file name)"
BY_NAME = "; to import the official file, name it DR2_FFHQ.pkl and pass no --name (with no published sha256 it is recognised by file name)"


@pytest.mark.parametrize("name, why, official", [
    ("codeformer", "the catalogued checkpoint codeformer (codeformer.pth)", BY_SHA256),
    ("codeformer.pth", "the catalogued checkpoint codeformer (codeformer.pth)", BY_SHA256),
    ("CodeFormer.safetensors", "the catalogued checkpoint codeformer (codeformer.pth)", BY_SHA256),
    ("dr2_ddpm", "the catalogued checkpoint dr2_ddpm (DR2_FFHQ.pkl)", BY_NAME),
    ("DR2_FFHQ", "the catalogued checkpoint dr2_ddpm (DR2_FFHQ.pkl)", BY_NAME),
    ("baseline", "the method baseline", ""),
    ("idm", "the method idm", ""),
    ("idm.pth", "the method idm", ""),
])
def test_a_name_of_your_own_may_not_be_a_catalogue_method_or_official_file_name(tmp_path, name, why, official):
    """`--name codeformer.pth` of a .safetensors was stored as codeformer.pth.safetensors, and `weights
    verify` showed a `codeformer.pth ... ok` row beside `codeformer missing`; `--name baseline` and
    `--name idm` were accepted, and `--name codeformer` imported a file as the official one. Every
    such name is refused before anything is read or stored (exit 2), with the way out: for an official
    file with no published sha256 (DR2's), the file name it is recognised by."""
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    mine = save_safetensors(tiny_state(), tmp_path / "mine.safetensors")
    result = CliRunner().invoke(app, ["weights", "import", str(mine), "--name", name])
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    assert line.startswith(f"error: --name {name} is taken by {why}, so it cannot name weights of your own; choose another --name"), line
    assert line.endswith(official) and ("to import the official file" in line) == bool(official), line
    assert not store.cache_dir().exists() and not any(entry.local for entry in load_catalogue().values())


@pytest.mark.parametrize("name", [".hidden", "..", "a/b", "x y"])
def test_a_name_that_is_no_plain_visible_file_name_is_refused(tiny_file, name):
    """`--name .hidden` was stored as a dot-file that `ls` hides in the cache; it is refused as
    `..`, `a/b` and `x y` are, before anything is stored."""
    with pytest.raises(UsageError) as info:
        store.import_weights(tiny_file, name=name)
    assert info.value.one_line().startswith(f"--name {name!r}: use letters, digits, '-', '_' and '.' only"), info.value.one_line()
    assert not store.cache_dir().exists() and not any(entry.local for entry in load_catalogue().values())


@pytest.mark.parametrize("name, method", [("idm", "idm"), ("baseline", "baseline"), ("IDM.pth", "idm"), ("codeformer.safetensors", None)])
def test_the_python_api_refuses_a_method_name_as_the_cli_does(tiny_file, name, method):
    """The refusal of method names lived in the CLI only (it passed them in), so
    `import_weights(file, name="idm")` registered weights 'idm'; the store refuses them itself."""
    with pytest.raises(UsageError) as info:
        store.import_weights(tiny_file, name=name)
    taken = f"the method {method}" if method else "the catalogued checkpoint codeformer (codeformer.pth)"
    assert info.value.one_line().startswith(f"--name {name} is taken by {taken}, so it cannot name weights of your own"), info.value.one_line()
    assert not store.cache_dir().exists() and not any(entry.local for entry in load_catalogue().values())


def test_a_name_whose_file_is_another_registrations_is_refused_and_names_like_methods_are_not(tiny_file, tmp_path):
    """`--name best` of a .pth stored best.pth, the file of your weights 'best.pth', and broke it."""
    store.import_file(tiny_file, name="best.pth")
    with pytest.raises(UsageError) as info:
        store.import_file(tiny_file, name="best")
    assert info.value.one_line() == ("--name best would store tiny.pth as best.pth, the file of your weights 'best.pth'; "
                                     "choose another --name, or import it with --name best.pth to replace those")
    for name in ("idm.v2", "codeformer-ft", "my-baseline"):  # a method's name with more to it is a name of your own
        assert store.import_file(tiny_file, name=name).is_file()


def test_import_no_verify_cannot_store_a_file_that_fails_the_catalogued_hash(tiny_file, use_entry, tmp_path):
    use_entry(entry_for(tiny_file))
    other = tmp_path / "tiny.pth"
    torch.save({"weight": torch.ones(2, 3)}, other)
    with pytest.raises(ChecksumMismatch) as info:
        store.import_file(other, verify=False)
    assert "register it as your own weights with --name" in info.value.one_line()
    assert not (store.cache_dir() / "tiny.pth").exists()


def test_an_unwritable_cache_is_one_line(tiny_file, use_entry, tmp_path, monkeypatch):
    use_entry(entry_for(tiny_file))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("FACERESTORE_HOME", str(blocker / "home"))
    with pytest.raises(WeightsError, match="cannot create the weights cache"):
        store.import_file(tiny_file)


def test_weights_pull_honours_offline_from_the_environment(tiny_file, use_entry):
    from typer.testing import CliRunner

    from facerestore.cli.app import app, register

    register()
    use_entry(entry_for(tiny_file))  # FACERESTORE_OFFLINE=1 (conftest): a download would be refused
    result = CliRunner().invoke(app, ["weights", "pull", "tiny"])
    assert result.exit_code == 1, result.output
    assert "offline" in result.output and "Traceback" not in result.output


def test_weights_pull_leaves_no_empty_bar_behind_a_failed_name(tiny_file, use_entry, monkeypatch):
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from facerestore.cli import weights as weights_cli
    from facerestore.cli.app import app, register

    register()
    use_entry(entry_for(tiny_file))
    screen = io.StringIO()
    monkeypatch.setattr(weights_cli, "err", Console(file=screen, force_terminal=True, width=200))
    assert CliRunner().invoke(app, ["weights", "pull", "tiny"]).exit_code == 1
    shown = screen.getvalue()
    last_frame = shown.rpartition("\x1b[2K")[2]  # what stays on the screen once the live display stops
    assert "offline" in shown and "0/?" not in last_frame  # it was "tiny ━━━ 0/? bytes ?"


def test_saved_safetensors_are_byte_identical_whatever_the_process(tmp_path):
    """safetensors writes its metadata in hash-map order, random per process: the same model shipped
    twice had two sha256s. The header is rewritten sorted; the tensors still load."""
    import json
    import struct

    from safetensors.torch import load_file

    from facerestore.weights.checkpoint import save_safetensors

    metadata = {name: str(i) for i, name in enumerate("hgfedcba")} | {"unet": json.dumps({"é": 1})}
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float16)}
    path = save_safetensors(state, tmp_path / "m.safetensors", metadata)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8 : 8 + length], object_pairs_hook=lambda pairs: [k for k, _ in pairs])
    assert header[0] == "__metadata__"
    meta_keys = json.loads(raw[8 : 8 + length])["__metadata__"]
    assert list(json.loads(raw[8 : 8 + length], object_pairs_hook=dict)["__metadata__"]) == sorted(meta_keys)
    loaded = load_file(path)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])


@pytest.mark.parametrize("metadata", [None, {}, {"a": "b"}])
def test_an_empty_state_saves_and_loads(tmp_path, metadata):
    """An optimizer before its first step has no tensors; safetensors 0.8 writes {} tensors with {}
    metadata as a header that it cannot read back."""
    from safetensors.torch import load_file

    from facerestore.weights.checkpoint import save_safetensors

    assert load_file(save_safetensors({}, tmp_path / "empty.safetensors", metadata)) == {}


def test_a_download_a_command_starts_says_so_on_stderr(tiny_file, use_entry, server, monkeypatch, capsys):
    """A first use downloads without `weights pull`'s bar: one line says what, how big and where,
    so hundreds of MB do not look like a hang (and a log shows where the time went)."""
    RangeHandler.payload = tiny_file.read_bytes()
    RangeHandler.honour_range = True
    use_entry(entry_for(tiny_file, urls=(server,)))
    monkeypatch.setenv("FACERESTORE_OFFLINE", "0")
    store.resolve("tiny")
    kb = round(tiny_file.stat().st_size / 1e3)
    assert capsys.readouterr().err == (f"downloading tiny.pth ({kb} kB) into {store.cache_dir()} (first use; "
                                       "`facerestore weights pull tiny` fetches it ahead of time)\n")
    store.resolve("tiny")  # found: nothing to say
    assert capsys.readouterr().err == ""


def test_importing_a_device_or_a_damaged_file_whose_name_has_a_parenthesis_says_what_it_is(tmp_path):
    """/dev/null "does not exist"; "DR2_FFHQ (1).pkl" cut short gave the reason "1).pkl is truncated or damaged (..."."""
    with pytest.raises(UsageError) as info:
        store.import_file("/dev/null", name="mine")
    assert info.value.one_line().startswith("/dev/null is not a regular file; name the checkpoint file itself")
    whole = tmp_path / "whole.pth"
    torch.save(tiny_state(), whole)
    cut = tmp_path / "my model (1).pth"
    cut.write_bytes(whole.read_bytes()[:100])
    with pytest.raises(WeightsError) as info:
        store.import_file(cut, name="mine")
    line = info.value.one_line()
    head = f"{cut} is not a readable checkpoint ("
    assert line.startswith(head) and not line[len(head):].startswith("1).pth") and "; nothing was stored;" in line, line

"""Read checkpoints without executing pickled code, unwrap the usual wrappers, load strictly.

Official checkpoints come as pickled `.pth` files wrapped in several ways (`params_ema`, `params`,
`state_dict`, a `module.` prefix from DataParallel). They are read with `torch.load(weights_only=True)`,
which refuses any pickled object other than tensors and plain containers, unwrapped in this one place,
and converted once to safetensors (a plain tensor file that memory-maps and cannot carry code).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facerestore.errors import UnsupportedCheckpoint, WeightsError
from facerestore.file_modes import new_file_mode

StateDict = dict[str, torch.Tensor]
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model")
SHOWN_KEYS = 5
# A file read by path is the user's own (a `facerestore train` export, a fine-tuned model): neither
# `weights pull` nor `weights import` mends it. A catalogue copy gets its cure from store.loadable,
# the bundled model from its method (reinstall).
OWN_FILE_HINT = "check that file: copy it again in full, or export it again from the run that wrote it"
BUNDLED_DAMAGED = "the model bundled with facerestore is damaged: reinstall facerestore"


def canonical_state_dict(obj: object, source: Path | str = "checkpoint") -> StateDict:
    """Unwrap `params_ema` / `params` / `state_dict` / `model`, strip `module.`, keep tensors only."""
    while isinstance(obj, Mapping):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise UnsupportedCheckpoint(f"{source} holds a {type(obj).__name__}, not a state dict", hint="pass a checkpoint saved with torch.save(model.state_dict())")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise UnsupportedCheckpoint(f"{source} holds no tensors", hint="pass a model checkpoint")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def is_safetensors(path: Path | str) -> bool:
    """By content, not by name: an 8-byte little-endian header length, then the JSON header."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def read_state_dict(path: Path | str) -> StateDict:
    """A state dict on the CPU from a safetensors or a pickled (.pth/.pt/.pkl/.ckpt) file, whatever its
    name says; wrappers and a `module.` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist", hint="check the path or run `facerestore weights list`")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{path} cannot be read (permission denied)", hint="ask its owner to make it readable, or copy it somewhere of yours")
    if is_safetensors(path) or path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return canonical_state_dict(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise UnsupportedCheckpoint(f"{path} is truncated or damaged (not a readable safetensors file: {exc})", hint=OWN_FILE_HINT) from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except Exception as exc:  # pickle errors, truncated zips, objects outside the allow-list
        raise _load_failure(path, exc) from None
    return canonical_state_dict(obj, path)


def _load_failure(path: Path, exc: Exception) -> UnsupportedCheckpoint:
    """Why torch could not read `path`, in the user's terms: a file of another format (an ONNX model,
    a web page saved under the checkpoint's name), a file cut short or damaged (an interrupted copy or
    download), or pickled objects other than tensors. torch's advice to
    retry with weights_only=False (which would run any code pickled into the file) is not passed on."""
    text = str(exc).strip()
    other = _other_format(path)
    if other:  # an ONNX model, a web page saved under the checkpoint's name: no unpickler's complaint about it
        return UnsupportedCheckpoint(f"{path} is not a PyTorch or safetensors checkpoint ({other})",
                                     hint="pass a checkpoint saved with torch.save (.pth, .pt, .ckpt) or a .safetensors file")
    if "WeightsUnpickler error:" in text:  # a global, a class, an opcode torch.save never writes: not damage
        return UnsupportedCheckpoint(f"{path} {_refused(text.split('WeightsUnpickler error:', 1)[1])}",
                                     hint="facerestore runs no pickled code: save the weights alone with torch.save(model.state_dict(), FILE)")
    return UnsupportedCheckpoint(f"{path} is truncated or damaged ({_damage(exc, text)})", hint=OWN_FILE_HINT)


def _refused(detail: str) -> str:
    """What the safe unpickler refused, without its advice: torch's line goes on to recommend
    allow-listing the global (`add_safe_globals`), the opposite of what facerestore does, so only
    the refused global's name is quoted (torch writes a builtin's without its `builtins.` module)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", detail)
    if found:
        name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
        return f"holds a pickled object ({name}), not only tensors"
    first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    first = first.split(". ", 1)[0].rstrip(".")[:200]  # "Unsupported operand 149": a first sentence, no advice
    return f"holds pickled data other than plain tensors ({first or 'the safe unpickler refused it'})"


def _other_format(path: Path) -> str:
    """'' for a file that starts as torch.save writes (a zip archive, or a pickle of protocol 2 or
    later), else what it looks like instead."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError:
        return ""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # a zip's first entry, or an empty zip's directory
        return _other_zip(path)
    if not head or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return ""
    if path.suffix.lower() == ".onnx":
        return "an ONNX model"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "it starts neither as a zip archive nor as a pickle"


def _other_zip(path: Path) -> str:
    """'' for a zip archive that is cut short or damaged (its directory at the end cannot be read) or
    that holds a torch.save checkpoint (a `data.pkl`, at the top or in one folder), else what it holds."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return ""
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"a zip archive without the data.pkl torch.save writes; it holds {shown}" if names else "an empty zip archive"


def _damage(exc: Exception, text: str) -> str:
    """torch's first sentence about the damage, without its paragraph of advice."""
    if isinstance(exc, EOFError) or "EOF" in text:
        return "it ends early"
    line = text.splitlines()[0].split(". ", 1)[0] if text else type(exc).__name__
    line = line if len(line) <= 200 else line[:200] + "..."
    return line if any(c.isalpha() for c in line) else f"{type(exc).__name__} {line}"  # "(101)" says nothing


def describe_mismatch(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> str:
    """'' when keys and shapes agree, else the first few missing / unexpected / reshaped keys."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    reshaped = [f"{k} {tuple(got[k].shape)} != {tuple(expected[k].shape)}" for k in expected if k in got and got[k].shape != expected[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", reshaped)):
        if keys:
            more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{label} {len(keys)}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    return "; ".join(parts)


def check_fits(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str = "checkpoint") -> None:
    """One line naming the file and the first mismatched keys unless `state` has every key and shape of
    `net`; reads no tensor, so `net` may live on the meta device."""
    problem = describe_mismatch(net.state_dict(), state)
    if problem:
        raise UnsupportedCheckpoint(
            f"{source} does not fit {type(net).__name__}: {problem}",
            hint="it is another architecture or a truncated file; pass the checkpoint this method expects",
        )


def load_strict(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path | str = "checkpoint") -> torch.nn.Module:
    """Load every key or raise one line naming the file and the first mismatched keys (no partial load)."""
    check_fits(net, state, source)
    net.load_state_dict(state, strict=True)
    return net


def fitting_net(
    state: Mapping[str, torch.Tensor],
    source: Path | str,
    what: str,
    infer: Callable[[Mapping[str, torch.Tensor]], Any],
    build: Callable[[Any], torch.nn.Module],
    check: Callable[[Any], str] | None = None,
    *,
    meta: bool = True,
    hint: str = "",
) -> tuple[Any, torch.nn.Module]:
    """The config `state` describes and its net built on the meta device (no memory; `meta` False: on
    the CPU, for a net that cannot be built there), after every check
    a method's loader makes before it loads: keys of this architecture (`infer`), a config the method
    can use (`check` returns why not), every key and shape (`check_fits`). Loaders then allocate the
    net and load; `weights import` runs it alone, so a file of another architecture under an official
    name is refused before its sha256 is recorded. Each failure is one UnsupportedCheckpoint naming `source`."""
    try:
        config = infer(state)
    except (UnsupportedCheckpoint, KeyError, IndexError, ValueError) as exc:  # keys or shapes of something else
        first = ", ".join(list(state)[:3])
        raise UnsupportedCheckpoint(f"{source} is not a {what} checkpoint ({exc}; its first keys: {first})", hint=hint) from None
    problem = check(config) if check else ""
    if problem:
        raise UnsupportedCheckpoint(f"{source} does not fit the {what}: {problem}", hint=hint)
    if meta:
        with torch.device("meta"):
            net = build(config)
    else:  # a net whose construction reads values (spandrel's SwinIR calls .item()): built on the CPU
        net = build(config)
    check_fits(net, state, source)
    return config, net


Parts = tuple[Callable[[Mapping[str, torch.Tensor]], Any], Callable[[Any], torch.nn.Module]]


@dataclass(frozen=True)
class NetSpec:
    """One network role of a method (DifFace's prior, DR2's enhancer, CodeFormer), declared once: its
    loader (`load`) and `weights import` (`fit`, a method's `FITS`) then make the same checks.

    what:   the net as errors name it ("DifFace SwinIR estimator")
    parts:  () -> (infer_config, build), imported only when a file is read (keeps `--help` fast)
    check:  config -> why the method cannot use it ('' if it can)
    meta:   build on the meta device (False: a net whose construction reads values, as SwinIR's)
    hint:   the hint of every refusal
    """

    what: str
    parts: Callable[[], Parts]
    check: Callable[[Any], str] | None = None
    meta: bool = True
    hint: str = ""

    def fitting(self, state: Mapping[str, torch.Tensor], source: Path | str) -> tuple[Any, torch.nn.Module]:
        """`fitting_net` for this role: the config and the net (on the meta device with `meta`)."""
        infer, build = self.parts()
        return fitting_net(state, source, self.what, infer, build, self.check, meta=self.meta, hint=self.hint)

    def fit(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Every check `load` makes before it allocates, alone: what `weights import` runs (`FITS`)."""
        self.fitting(state, source)

    def load(self, path: Path | str, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Read `path` safely, read its config from the tensors, build, and load every key strictly; eval mode.

        Any mismatch is one `UnsupportedCheckpoint` line naming the file (never a partial load):
        an unreadable or truncated file (`read_state_dict`), keys of another architecture (`infer`),
        a config the method cannot use (`check` returns a reason), missing / unexpected / reshaped keys
        (`load_strict`). With `meta`, the net is built on the meta device and allocated uninitialised
        on `device`, so a 160M-parameter net is not randomly initialised only to be overwritten.
        """
        from facerestore.weights.store import display_name

        state = read_state_dict(path)
        name = display_name(path)  # the cache's conversion of a .pth: name the file the user knows
        config, net = self.fitting(state, name)
        if self.meta:
            persistent = set(net.state_dict())
            if any(buffer not in persistent for buffer, _ in net.named_buffers()):
                net = self.parts()[1](config)  # non-persistent buffers would stay uninitialised: build for real
            else:
                net = net.to_empty(device=device)
        return load_strict(net, state, name).to(device).eval()


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """Write atomically (temp file + rename); tensors sharing memory are copied apart first."""
    from safetensors.torch import save_file

    path = Path(path)
    seen: set[tuple[int, int]] = set()
    plain = {}
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if ident in seen or tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(ident)
        plain[key] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(plain, tmp, metadata=metadata or None)  # safetensors 0.8 writes no tensors + {} as broken JSON
        _sort_metadata(Path(tmp))
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; the result is a normal user file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sort_metadata(path: Path) -> None:
    """safetensors writes `__metadata__` in hash-map order, which changes with every process: the same
    model saved twice had two sha256s. Rewrite the header with the metadata keys sorted. The header
    keeps its length (same keys and values, compact JSON as safetensors writes it), so the tensor
    bytes after it stay where they are and only the header is rewritten in place."""
    import json
    import struct

    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        raw = handle.read(length)
        header = json.loads(raw, object_pairs_hook=dict)
        meta = header.get("__metadata__")
        if not meta:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > length:  # not the compact form expected: leave the file as written, still valid
            return
        handle.seek(8)
        handle.write(text.ljust(length, b" "))  # safetensors pads its header with spaces too


def safetensors_metadata(path: Path | str) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})

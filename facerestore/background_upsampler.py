"""--bg-upsampler: Real-ESRGAN enlarges the whole photo before the restored faces are pasted into it,
as GFPGAN's and CodeFormer's inference scripts do (`--bg_upsampler realesrgan`, ANCHORS.md 1.4).

The official checkpoints (`{'params_ema': RRDBNet state dict}`) are loaded by spandrel, which reads
the architecture from the tensor shapes (blocks, features, and the pixel-unshuffle in front of the
x2 model), so no network of ours stands between the published file and the output. The net runs at
its own scale (x2 or x4) and the result is resized with Lanczos to the exact `--upscale` size, as
Real-ESRGAN's `outscale` does. The photo goes through in tiles (`--bg-tile`, 400 px as GFPGAN, each
with TILE_PAD px of its neighbours around it, cut off again), so memory follows the tile, not the
photo, and each tile's result goes straight into the integer samples the pipeline pastes into.
fp16 only on CUDA (the CPU has no fast fp16 convolutions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from facerestore.devices import for_inference
from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.image_io import from_samples, to_samples

# --bg-upsampler value -> (weights catalogue name, the net's scale)
UPSAMPLERS = {"realesrgan": ("realesrgan_x2plus", 2), "realesrgan-x4": ("realesrgan_x4plus", 4)}
CHOICES = ("none", *UPSAMPLERS)
DEFAULT_TILE = 400  # GFPGAN's and CodeFormer's --bg_tile
TILE_PAD = 10  # context around each tile (GFPGAN's tile_pad), rounded up to the net's size multiple


def check_background_options(name: str, tile: int) -> None:
    """The checks of --bg-upsampler and --bg-tile that read nothing: usage errors before any work."""
    if name not in CHOICES:
        raise UsageError(f"--bg-upsampler {name!r} is not a background upsampler", hint=f"use one of: {', '.join(CHOICES)}")
    if tile < 0:
        raise UsageError(f"--bg-tile must be 0 (the whole photo at once) or a tile size in pixels, got {tile}")


@dataclass(frozen=True)
class BackgroundUpsampler:
    """A loaded Real-ESRGAN net (a spandrel descriptor) and how to run it."""

    model: object  # spandrel ImageModelDescriptor
    source: Path
    tile: int = DEFAULT_TILE  # 0: the whole photo in one piece
    tile_pad: int = TILE_PAD

    @property
    def scale(self) -> int:
        return int(self.model.scale)

    def enlarge(self, rgb: np.ndarray, size: tuple[int, int], dtype: type = np.uint8) -> np.ndarray:
        """HxWx3 float [0, 1] (or uint8 / uint16 samples) -> samples of `dtype` (uint8, uint16, or
        float32 for [0, 1]) at `size` (width, height): the net at its scale, then Lanczos to `size`
        where that differs."""
        height, width = rgb.shape[:2]
        native = (width * self.scale, height * self.scale)
        out = np.empty((native[1], native[0], 3), dtype)
        upscale_tiles(self.model, rgb, out, tile=self.tile, pad=self.tile_pad)
        if native == tuple(size):
            return out
        return cv2.resize(out, tuple(size), interpolation=cv2.INTER_LANCZOS4)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def upscale_tiles(model, rgb: np.ndarray, out: np.ndarray, *, tile: int = DEFAULT_TILE, pad: int = TILE_PAD) -> np.ndarray:
    """Run `model` (scale s) over `rgb` (HxWx3 float [0, 1], or uint8 / uint16 samples, made float a
    tile at a time) tile by tile into `out` (sH x sW x 3, float32 or uint8 / uint16 samples, rounded). Each tile is cut with `pad` pixels of context on
    every side where the photo has them, and only its own part of the result is kept, so a pad
    wider than the net's receptive field gives exactly the untiled result. Tile and pad are rounded
    up to the net's size multiple: the x2 model pixel-unshuffles its input, and a tile starting at
    an odd pixel would be grouped into 2x2 cells unlike the whole photo."""
    scale = int(model.scale)
    height, width = rgb.shape[:2]
    multiple = max(1, int(getattr(model.size_requirements, "multiple_of", 1)))
    step = _round_up(tile if tile > 0 else max(height, width), multiple)
    pad = _round_up(pad, multiple)
    device, dtype = model.device, model.dtype
    for top in range(0, height, step):
        for left in range(0, width, step):
            bottom, right = min(top + step, height), min(left + step, width)
            y0, x0 = max(top - pad, 0), max(left - pad, 0)
            y1, x1 = min(bottom + pad, height), min(right + pad, width)
            part = rgb[y0:y1, x0:x1]
            part = from_samples(part) if part.dtype.kind == "u" else np.ascontiguousarray(part, dtype=np.float32)
            patch = torch.from_numpy(part).permute(2, 0, 1)[None]
            result = model(patch.to(device=device, dtype=dtype))[0]
            own = result[:, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale]
            own = own.permute(1, 2, 0).float().cpu().numpy()
            target = out[top * scale : bottom * scale, left * scale : right * scale]
            target[...] = own if out.dtype == np.float32 else to_samples(own, out.dtype)
    return out


def load_background_upsampler(name: str, *, device: str = "cpu", half: bool = True, tile: int = DEFAULT_TILE,
                              offline: bool | None = None) -> BackgroundUpsampler | None:
    """The net for --bg-upsampler `name` from the weights catalogue, or None for 'none'. `half` is
    honoured on CUDA only."""
    check_background_options(name, tile)
    if name == "none":
        return None
    from facerestore.weights.checkpoint import read_state_dict
    from facerestore.weights.store import display_name, resolve

    entry, scale = UPSAMPLERS[name]
    path = resolve(entry, offline=offline)
    model = load_realesrgan(read_state_dict(path), display_name(path), scale)
    for_inference(model.model, device)  # channels-last on the CPU: 13% less CPU time for the x2 net
    if half and torch.device(device).type == "cuda" and model.supports_half:
        model.half()
    return BackgroundUpsampler(model=model, source=Path(path), tile=tile)


def load_realesrgan(state: dict[str, torch.Tensor], source: str, scale: int):
    """A spandrel descriptor for an RRDBNet state dict of the given scale; one line naming the file
    when it is another architecture or scale."""
    from spandrel import ModelLoader, UnsupportedModelError

    try:
        model = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise UnsupportedCheckpoint(f"{source} is not a Real-ESRGAN (RRDBNet) checkpoint: spandrel recognises no architecture in it",
                                    hint="pass the official RealESRGAN_x2plus.pth / RealESRGAN_x4plus.pth") from None
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:  # the right keys, wrong or missing tensors
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UnsupportedCheckpoint(f"{source} does not load as an RRDBNet ({reason})",
                                    hint="it may be truncated or another model; download it again or `facerestore weights verify`") from None
    if model.architecture.id != "ESRGAN" or model.scale != scale:
        raise UnsupportedCheckpoint(f"{source} is a {model.architecture.id} x{model.scale} model, not Real-ESRGAN x{scale}",
                                    hint=f"pass the official Real-ESRGAN x{scale} checkpoint")
    return model

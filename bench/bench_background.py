"""Cost of --bg-upsampler: seconds per input megapixel of Real-ESRGAN x2 / x4 over a photo, tiled as
the pipeline runs it.

    python bench/bench_background.py [--device cpu|cuda] [--size 384] [--tile 400] [--threads 2] [--repeat 2]

The official RealESRGAN_x2plus / x4plus files are used when the weights catalogue finds them on this
machine (offline: nothing is downloaded); otherwise a full-size RRDBNet of the same shape (23 blocks,
64 features; x2 with the pixel-unshuffle in front) with random weights, which costs the same. The
photo is a smooth synthetic SIZExSIZE image; --tile 0 runs it in one piece. Each row gives the
minimum of --repeat timings after one warm-up (the least disturbed run on a shared machine) and the
load average at the start. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from facerestore.background_upsampler import UPSAMPLERS, BackgroundUpsampler, load_background_upsampler
from facerestore.devices import for_inference
from facerestore.errors import FaceRestoreError


def random_upsampler(scale: int, tile: int, device: str) -> BackgroundUpsampler:
    """A full-size Real-ESRGAN-shaped net with random weights, loaded by spandrel as the real one is."""
    from spandrel import ModelLoader
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    # x2plus pixel-unshuffles its input (12 channels at half size) and enlarges x4: its body runs at a
    # quarter of x4plus's pixels, which is why x2 is the cheaper one
    shuffle = 2 if scale == 2 else None
    net = ESRGAN(in_nc=3 * (shuffle or 1) ** 2, num_filters=64, num_blocks=23, scale=4, shuffle_factor=shuffle)
    model = ModelLoader().load_from_state_dict(net.state_dict())
    for_inference(model.model, device)
    return BackgroundUpsampler(model=model, source=None, tile=tile)


def photo(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([0.5 + 0.3 * np.sin(x / 17), 0.5 + 0.3 * np.cos(y / 13), 0.4 + 0.2 * np.sin((x + y) / 23)], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=384, help="side of the square test photo, px")
    parser.add_argument("--tile", type=int, default=400, help="--bg-tile (0: the whole photo at once)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb = photo(args.size)
    megapixels = args.size * args.size / 1e6
    print(f"{args.size}x{args.size} photo, --bg-tile {args.tile}, {args.device}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print()
    print("| --bg-upsampler | weights | output | seconds | s per input MP |")
    print("|---|---|---|---|---|")
    for name, (_, scale) in UPSAMPLERS.items():
        try:
            upsampler, weights = load_background_upsampler(name, device=args.device, tile=args.tile, offline=True), "official"
        except FaceRestoreError:
            upsampler, weights = random_upsampler(scale, args.tile, args.device), "random (same shape)"
        size = (args.size * scale, args.size * scale)
        times = []
        with torch.inference_mode():
            upsampler.enlarge(rgb[:64, :64], (64 * scale, 64 * scale))  # warm-up
            for _ in range(args.repeat):
                start = time.perf_counter()
                upsampler.enlarge(rgb, size)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        best = min(times)
        print(f"| {name} | {weights} | {size[0]}x{size[1]} | {best:.2f} | {best / megapixels:.0f} |")


if __name__ == "__main__":
    main()

"""`codeformer`: Zhou et al., NeurIPS 2022, on the official `codeformer.pth` (ANCHORS.md 2).

Why our own module (`facerestore.nets.codeformer`) and not spandrel-extra-arches': the official
checkpoint loads into ours unchanged (same 515 keys and shapes; outputs equal to float rounding,
checked in tests/test_codeformer.py), and ours also builds small test nets and exposes the code-level
outputs (logits, `lq_feat`, codebook features) that fine-tuning on pseudo-targets needs (Kuai et al.
2025, ANCHORS.md 7.2). A fine-tuned checkpoint has the same layout, so `--weights FILE` takes one.

Why strict loading: the checkpoint's `params_ema` wrapper is unwrapped by our safe reader (no pickled
code runs), the hyperparameters are read back from the tensor shapes, and every key must fit; a
file of another architecture, or a truncated one, fails with one line naming the file and the first
mismatched keys instead of restoring faces with half-initialised weights.

Fidelity w in [0,1] (upstream `-w`, default 0.5): 0 favours quality (the face is decoded from
codebook entries alone; the encoder-decoder fusion is skipped), 1 favours fidelity to the input (the
fusion adds w * (dec * scale + shift) at the 32..256 feature sides). Upstream's README suggests 0.7
for whole photos. Like upstream, AdaIN matches the looked-up codes to the input's feature statistics.

Licence: the weights and the reference code are under the NTU S-Lab License 1.0, non-commercial use only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from facerestore.devices import autocast, autocast_dtype
from facerestore.errors import UsageError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.nets.codeformer import HINT, CodeFormer, infer_config
from facerestore.weights.checkpoint import NetSpec, Parts
from facerestore.weights.store import loading_option, resolve

DEFAULT_FIDELITY = 0.5  # the official inference scripts' w

INFO = MethodInfo(
    name="codeformer",
    summary="CodeFormer (Zhou et al. 2022): codebook lookup transformer, one forward pass",
    paper="Towards Robust Blind Face Restoration with Codebook Lookup Transformer, NeurIPS 2022",
    license="NTU S-Lab License 1.0: NON-COMMERCIAL use only",
    commercial_use=False,
    weights=("codeformer",),
    knobs={
        "fidelity": "w in [0,1], default 0.5: 0 = quality (codebook), 1 = fidelity to the input (README suggests 0.7 for photos)",
        "weights": "FILE or registered name of a CodeFormer checkpoint (e.g. fine-tuned); default the official codeformer.pth",
    },
)


def _codeformer_parts() -> Parts:
    """(infer_config, build): the net's module is imported with this one already (it names HINT)."""
    return infer_config, CodeFormer


CODEFORMER = NetSpec("CodeFormer", _codeformer_parts, hint=HINT)

# catalogue name -> the checks this method's loader makes on that file's state dict (`weights import`)
FITS = {"codeformer": CODEFORMER.fit}


def _fidelity(options: MethodOptions) -> float:
    """-w/--fidelity, checked (a UsageError before any weights are read)."""
    fidelity = DEFAULT_FIDELITY if options.fidelity is None else options.fidelity
    if not 0.0 <= fidelity <= 1.0:  # also rejects NaN
        raise UsageError(f"--fidelity must be in [0,1], got {fidelity}", hint="0 favours quality, 1 fidelity to the input; 0.5 is the default")
    return float(fidelity)


def load_codeformer(path: Path | str, device: torch.device | str = "cpu") -> CodeFormer:
    """A CodeFormer in eval mode with every tensor of the checkpoint at `path` loaded strictly.

    The net is built on the meta device and allocated uninitialised on `device` (no wasted random
    init of 94M parameters); `load_strict` then fills every tensor or raises before anything is used.
    """
    return CODEFORMER.load(path, device).requires_grad_(False)


class CodeFormerMethod:
    """crops [B,3,512,512] in [0,1] -> restored crops, all faces in one batched forward pass.

    (The side is the checkpoint's `img_size`: 512 for every published CodeFormer.)
    """

    info = INFO

    def __init__(self, options: MethodOptions) -> None:
        fidelity = _fidelity(options)
        self.device = torch.device(options.device)
        self.autocast = autocast_dtype(self.device, options.precision, auto_on_cuda=False)  # before reading weights
        path = resolve("codeformer", explicit=options.weights, offline=options.offline, option=options.weights_option)
        with loading_option(options.weights_option, named=options.weights is not None):  # a bad --weights file: exit 2
            self.net = load_codeformer(path, self.device)
        self.weights_files = {"weights": path}
        self.fidelity = fidelity

    def run_options(self) -> dict[str, float]:
        return {"fidelity": self.fidelity}

    @staticmethod
    def planned_options(options: MethodOptions) -> dict[str, float]:
        """`run_options` of the method `options` build, or the UsageError for a bad --fidelity its build raises
        before reading weights: the registry's one hook (clean-dataset's plan, the check before any loads)."""
        return {"fidelity": _fidelity(options)}

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Deterministic: `generator` is unused. [0,1] -> [-1,1] -> net(x, w, adain=True) -> clamp -> [0,1]."""
        x = crops.to(self.device, torch.float32) * 2.0 - 1.0
        side, size = self.net.config.img_size, crops.shape[-1]
        if side != size:  # a model fine-tuned at another --size: its own scale, then back to the crop's
            x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=side < size, align_corners=False)
        with autocast(self.device, self.autocast):
            out = self.net(x, w=self.fidelity, adain=True)[0].float()
        if side != size:
            out = F.interpolate(out, size=(size, size), mode="bicubic", antialias=size < side, align_corners=False)
        return ((out.clamp(-1.0, 1.0) + 1.0) / 2.0).to(device=crops.device, dtype=crops.dtype)

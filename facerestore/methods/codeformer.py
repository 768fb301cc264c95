"""`codeformer`: Zhou et al., NeurIPS 2022, on the official `codeformer.pth` (ANCHORS.md 2).

The architecture comes from spandrel-extra-arches (the official module, keys unchanged); the
checkpoint's `params_ema` wrapper is unwrapped by our safe reader and loaded strictly.
Fidelity w in [0,1]: 0 favours quality (codebook), 1 favours fidelity to the input.
"""

from __future__ import annotations

import torch

from facerestore.errors import UsageError
from facerestore.methods.base import MethodInfo, MethodOptions
from facerestore.weights.checkpoint import load_strict, read_state_dict
from facerestore.weights.store import resolve

INFO = MethodInfo(
    name="codeformer",
    summary="CodeFormer (Zhou et al. 2022): codebook lookup transformer, one forward pass",
    paper="Towards Robust Blind Face Restoration with Codebook Lookup Transformer, NeurIPS 2022",
    license="NTU S-Lab License 1.0: NON-COMMERCIAL use only",
    commercial_use=False,
    weights=("codeformer",),
    knobs={"fidelity": "w in [0,1], default 0.5 (README suggests 0.7 for photos)"},
)


def build_codeformer(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the official architecture with hyperparameters read from the state dict's shapes."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    connect = [k for k in ("16", "32", "64", "128", "256", "512") if f"fuse_convs_dict.{k}.scale.0.weight" in state_dict]
    layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("ft_layers."))
    return CodeFormer(
        dim_embd=state_dict["position_emb"].shape[1],
        n_head=8,  # not recoverable from shapes; 8 in every published checkpoint
        n_layers=layers,
        codebook_size=state_dict["quantize.embedding.weight"].shape[0],
        latent_size=state_dict["position_emb"].shape[0],
        connect_list=connect,
    )


class CodeFormerMethod:
    info = INFO

    def __init__(self, options: MethodOptions) -> None:
        if not 0.0 <= options.fidelity <= 1.0:
            raise UsageError(f"--fidelity must be in [0,1], got {options.fidelity}")
        path = resolve("codeformer", explicit=options.weights, offline=options.offline)
        state = read_state_dict(path)
        try:
            self.net = build_codeformer(state)
        except (KeyError, ValueError) as exc:
            from facerestore.errors import UnsupportedCheckpoint

            raise UnsupportedCheckpoint(f"{path} is not a CodeFormer checkpoint (missing {exc})", hint="pass the official codeformer.pth or a fine-tuned copy") from exc
        load_strict(self.net, state, path)
        self.device = torch.device(options.device)
        self.net.to(self.device).eval()
        self.fidelity = options.fidelity

    @torch.inference_mode()
    def restore(self, crops: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = crops.to(self.device) * 2.0 - 1.0
        out = self.net(x, weight=self.fidelity)[0]
        return ((out.clamp(-1.0, 1.0) + 1.0) / 2.0).to(crops.device)

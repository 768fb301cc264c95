"""LPIPS-vgg (Zhang et al. 2018, v0.1), the perceptual distance of the face-restoration papers.

The learned linear heads ship inside the `lpips` PyPI package; its VGG16 ImageNet backbone does not,
and the package would download torchvision's copy at run time. So the net is built with its backbone
off (on the meta device: nothing is allocated or initialised), and the backbone comes from our
weights catalogue (`vgg16_lpips`, torchvision's vgg16-397923af.pth) through `resolve`. Without that
file, offline, the metric is unavailable with a line naming the file and the import command.

Cost: two 512x512 images through VGG16 are about 160 GFLOP: 12 s of CPU time per pair on the 2-core
development machine (mind this when evaluating hundreds of faces on a CPU; a GPU takes milliseconds).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from facerestore.errors import UnsupportedCheckpoint
from facerestore.metrics.images import ImageLike, as_image, same_shape
from facerestore.metrics.result import require_package, resolve_weights

WEIGHTS = "vgg16_lpips"
METRIC = "LPIPS-vgg"


def _heads_path(lpips_module) -> Path:
    return Path(lpips_module.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def backbone_state(state: dict, net_keys: list[str]) -> dict:
    """torchvision `features.I.param` -> lpips `net.sliceK.I.param` for every key the net has.

    The slices keep torchvision's layer indices, so the mapping is read off the net's own keys.
    """
    mapped, missing = {}, []
    for key in net_keys:
        _, _, index, param = key.split(".")
        source = f"features.{index}.{param}"
        if source in state:
            mapped[key] = state[source]
        else:
            missing.append(source)
    if missing:
        raise UnsupportedCheckpoint(
            f"the LPIPS backbone checkpoint lacks {len(missing)} VGG16 feature tensors (first: {missing[0]})",
            hint="pass torchvision's vgg16-397923af.pth (`facerestore weights pull vgg16_lpips`)",
        )
    return mapped


def load_lpips(weights: str | Path = WEIGHTS, offline: bool | None = None, device: str = "cpu"):
    """The LPIPS-vgg module in eval mode with our backbone and the package's heads.

    Built once per (backbone file, device): the file is resolved first, so a different file under
    the same name (another FACERESTORE_HOME, a re-import) gets its own net.
    """
    path = resolve_weights(METRIC, weights, offline=offline)  # first: a missing file is reported without importing lpips
    require_package(METRIC, "lpips")
    stat = path.stat()
    return _build(str(path.resolve()), stat.st_size, stat.st_mtime_ns, device)


@lru_cache(maxsize=2)
def _build(path: str, size: int, mtime_ns: int, device: str):
    import lpips
    import torch

    from facerestore.weights.checkpoint import read_state_dict

    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
        net = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False)
    net = net.to_empty(device="cpu")  # every tensor is overwritten by the strict load below
    net_keys = [k for k in net.state_dict() if k.startswith("net.")]
    state = backbone_state(read_state_dict(path), net_keys)
    heads = read_state_dict(_heads_path(lpips))
    for i in range(len(net.chns)):
        key = f"lin{i}.model.1.weight"
        state[key] = state[f"lins.{i}.model.1.weight"] = heads[key]
    scaling = lpips.ScalingLayer()  # its constants are plain buffers, rebuilt on the CPU
    state["scaling_layer.shift"], state["scaling_layer.scale"] = scaling.shift, scaling.scale
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval().requires_grad_(False).to(device)


def _to_tensor(image: np.ndarray, device: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)


def lpips_distance(
    restored: ImageLike,
    reference: ImageLike,
    *,
    weights: str | Path = WEIGHTS,
    offline: bool | None = None,
    device: str = "cpu",
) -> float:
    """LPIPS-vgg distance (lower is better; 0 for identical images). Inputs in [0, 1] are mapped
    to [-1, 1] as the package expects (`normalize=True`)."""
    import torch

    a, b = as_image(restored), as_image(reference)
    same_shape(a, b)
    net = load_lpips(weights, offline, device)
    with torch.inference_mode():
        value = net(_to_tensor(a, device), _to_tensor(b, device), normalize=True)
    return float(value.reshape(-1)[0])

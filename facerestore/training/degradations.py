"""Synthetic degradations for training and evaluation (IDM eq. 11, following GFPGAN's pipeline).

Two layers: the IDM eq. 11 functions (`Eq11Params`, `sample_eq11`, `apply_eq11`, `degrade_eq11`),
and the general pipeline below them (`DegradationSpec` -> `sample_params` -> `DegradationParams` ->
`apply_degradation`, named `PRESETS`) that adds motion blur, Laplace / Poisson / camera noise,
grayscale and other resize kernels. The "eq11" preset reproduces the first layer exactly.

    x_d = [ (x (*) k_sigma) downsampled by r  + n_delta ]_JPEG_q , then resized back to the input size

with sigma in [0.2, 10], r in [1, 8], delta in [0, 15] (on the 0-255 scale) and q in [50, 100]
(Zhao et al. 2023, sec. 4.1). Like GFPGAN, the blur kernel is 41x41, the resizes are bilinear and
JPEG goes through OpenCV. Parameters are drawn from a numpy Generator and returned with the image, so
every degraded sample can be reproduced and reported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from facerestore.errors import UsageError

BLUR_KERNEL_SIZE = 41


@dataclass(frozen=True)
class Eq11Ranges:
    """Closed intervals the parameters are drawn from (uniformly)."""

    sigma: tuple[float, float] = (0.2, 10.0)
    scale: tuple[float, float] = (1.0, 8.0)
    noise: tuple[float, float] = (0.0, 15.0)
    jpeg: tuple[float, float] = (50.0, 100.0)


@dataclass(frozen=True)
class Eq11Params:
    sigma: float  # Gaussian blur std in pixels
    scale: float  # downsampling factor r
    noise: float  # Gaussian noise std on the 0-255 scale
    jpeg: int  # JPEG quality

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_eq11(rng: np.random.Generator, ranges: Eq11Ranges = Eq11Ranges()) -> Eq11Params:
    return Eq11Params(
        sigma=float(rng.uniform(*ranges.sigma)),
        scale=float(rng.uniform(*ranges.scale)),
        noise=float(rng.uniform(*ranges.noise)),
        jpeg=int(round(rng.uniform(*ranges.jpeg))),
    )


def jpeg_compress(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip float RGB [0,1] through an OpenCV JPEG encoder at this quality."""
    bgr = np.round(np.clip(image, 0, 1)[..., ::-1] * 255.0).astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 BGR
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def apply_eq11(image: np.ndarray, params: Eq11Params, rng: np.random.Generator) -> np.ndarray:
    """Degrade float32 RGB HxWx3 in [0,1]; the result has the input's size and lies in [0,1]."""
    height, width = image.shape[:2]
    x = cv2.GaussianBlur(image.astype(np.float32), (BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE), params.sigma, borderType=cv2.BORDER_REFLECT_101)
    small = (max(1, round(width / params.scale)), max(1, round(height / params.scale)))
    x = cv2.resize(x, small, interpolation=cv2.INTER_LINEAR)
    if params.noise > 0:
        x = x + rng.normal(0.0, params.noise / 255.0, size=x.shape).astype(np.float32)
    x = jpeg_compress(np.clip(x, 0.0, 1.0), params.jpeg)
    x = cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(x, 0.0, 1.0)


def degrade_eq11(image: np.ndarray, rng: np.random.Generator, ranges: Eq11Ranges = Eq11Ranges()) -> tuple[np.ndarray, Eq11Params]:
    """Draw parameters and apply them: (degraded image, parameters used)."""
    params = sample_eq11(rng, ranges)
    return apply_eq11(image, params, rng), params


# ---------------------------------------------------------------------------------------------
# The wider set users meet: presets, motion blur, Laplace / Poisson / camera noise, grayscale.
#
# One pipeline, each stage optional (GFPGAN's order, IDM eq. 11 extended):
#
#     x_d = gray?( up( JPEG_q( down_r( x (*) k ) + n ) ) )
#
#     k       Gaussian k_sigma (41x41, as GFPGAN) or a motion-blur line of `motion_length` pixels at
#             `motion_angle` degrees (DeblurGAN-style linear motion), or none
#     down_r  resize by 1/r (bilinear as GFPGAN, bicubic as DR2, or area); `up` resizes back
#     n       additive noise with std `noise` (0-255 scale) at mid-grey, of one kind:
#               gaussian  N(0, delta^2)                                    (IDM eq. 11, GFPGAN)
#               laplace   Laplace(0, b), b = delta / sqrt(2)  -> std delta
#               poisson   Poisson(x * peak) / peak, peak = 0.5 / (delta/255)^2, so the std is
#                         delta at x = 0.5 and follows sqrt(x) elsewhere
#                         (DR2 Sec. 4.1 draws its noise from Gaussian, Laplace and Poisson without
#                         saying how delta scales the last two; these std-delta scalings are ours)
#               camera    heteroscedastic shot + read noise in LINEAR light (Brooks et al. 2019,
#                         "Unprocessing images for learned raw denoising"; their log-log line for
#                         the read noise given the shot noise):
#                         var = shot * L + read, L = sRGB^-1(x); `noise` reports the resulting
#                         std at mid-grey on the 0-255 sRGB scale
#     JPEG_q  OpenCV JPEG at quality q
#     gray?   BT.601 luma copied to the three channels (old photos; GFPGAN's gray_prob)
#
# Every drawn value is returned in `DegradationParams` (written by `facerestore degrade`), and
# `apply_degradation(image, params, rng)` reproduces an image from its parameters; `rng` is used
# only for the noise samples. With the "eq11" preset `degrade` draws exactly what `degrade_eq11`
# draws, in the same order, and returns the same image.
# ---------------------------------------------------------------------------------------------

NOISE_KINDS = ("gaussian", "laplace", "poisson", "camera")
INTERPOLATIONS = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class DegradationSpec:
    """What to draw. Ranges are closed intervals drawn uniformly; `*_prob` are stage probabilities.

    A probability of exactly 0 or 1, a one-element choice and a one-value range draw nothing from
    the generator, so a spec that matches IDM eq. 11 consumes the generator as `sample_eq11` does.
    """

    name: str = "custom"
    blur_prob: float = 1.0
    motion_prob: float = 0.0  # of the blurred images, the share blurred by motion instead of a Gaussian
    sigma: tuple[float, float] = (0.2, 10.0)
    motion_length: tuple[float, float] = (5.0, 25.0)  # pixels at the input size
    scale: tuple[float, float] = (1.0, 8.0)
    interpolations: tuple[str, ...] = ("bilinear",)
    noise_prob: float = 1.0
    noise_kinds: tuple[str, ...] = ("gaussian",)
    noise: tuple[float, float] = (0.0, 15.0)  # std on the 0-255 scale (gaussian, laplace, poisson)
    camera_shot: tuple[float, float] = (1e-4, 1.2e-2)  # log-uniform shot-noise variance per unit of linear light
    jpeg_prob: float = 1.0
    jpeg: tuple[float, float] = (50.0, 100.0)
    gray_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_prob") and not 0.0 <= value <= 1.0:
                raise UsageError(f"degradation {f.name} must be in [0, 1], got {value}")
            if isinstance(value, tuple) and f.name not in ("interpolations", "noise_kinds"):
                if len(value) != 2 or value[0] > value[1]:
                    raise UsageError(f"degradation range {f.name} must be (low, high) with low <= high, got {value}")
        if self.scale[0] < 1.0:
            raise UsageError(f"the downsampling factor r must be >= 1, got {self.scale}")
        if self.sigma[0] <= 0.0:
            raise UsageError(f"the blur sigma must be > 0, got {self.sigma}")
        if not 1 <= self.jpeg[0] <= self.jpeg[1] <= 100:
            raise UsageError(f"JPEG quality must lie in 1..100, got {self.jpeg}")
        if self.noise[0] < 0:
            raise UsageError(f"the noise std must be >= 0, got {self.noise}")
        if not self.noise_kinds or any(k not in NOISE_KINDS for k in self.noise_kinds):
            raise UsageError(f"noise kinds {self.noise_kinds} must be among {', '.join(NOISE_KINDS)}")
        if not self.interpolations or any(i not in INTERPOLATIONS for i in self.interpolations):
            raise UsageError(f"interpolations {self.interpolations} must be among {', '.join(INTERPOLATIONS)}")


@dataclass(frozen=True)
class DegradationParams:
    """One image's degradation, enough to reproduce it (with the noise generator) and to report it."""

    blur: str = "none"  # none | gaussian | motion
    sigma: float = 0.0  # Gaussian blur std in pixels
    motion_length: float = 0.0  # motion blur length in pixels
    motion_angle: float = 0.0  # motion direction in degrees, counter-clockwise from +x
    scale: float = 1.0  # downsampling factor r
    interpolation: str = "bilinear"
    noise_kind: str = "none"  # none | gaussian | laplace | poisson | camera
    noise: float = 0.0  # std on the 0-255 scale (for poisson and camera: at mid-grey)
    shot: float = 0.0  # camera: shot-noise variance per unit of linear light
    read: float = 0.0  # camera: read-noise variance (linear light)
    jpeg: int | None = None  # JPEG quality, None = no JPEG
    gray: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_eq11(cls, params: Eq11Params) -> DegradationParams:
        return cls(blur="gaussian", sigma=params.sigma, scale=params.scale, noise_kind="gaussian" if params.noise > 0 else "none",
                   noise=params.noise, jpeg=params.jpeg)


def _fixed(name: str, sigma: float, scale: float, noise: float, jpeg: int) -> DegradationSpec:
    """Eq. 11 with fixed parameters (nothing is drawn but the noise)."""
    return DegradationSpec(name=name, sigma=(sigma, sigma), scale=(scale, scale), noise=(noise, noise), jpeg=(jpeg, jpeg))


def _dr2(name: str, sigma: tuple[float, float], scale: float, noise: tuple[float, float], jpeg: tuple[float, float]) -> DegradationSpec:
    return DegradationSpec(name=name, sigma=sigma, scale=(scale, scale), interpolations=("bicubic",),
                           noise_kinds=("gaussian", "laplace", "poisson"), noise=noise, jpeg=jpeg)


PRESETS: dict[str, DegradationSpec] = {
    # IDM eq. 11 (Zhao et al. 2023 sec. 4.1), implemented as GFPGAN does
    "eq11": DegradationSpec(name="eq11"),
    # eq. 11 at the fixed severities facerestore validates and evaluates with (`facerestore evaluate`,
    # train_baseline's VAL_SEVERITIES): (sigma, r, noise, q)
    "mild": _fixed("mild", 1.5, 2.0, 3.0, 85),
    "medium": _fixed("medium", 4.0, 4.0, 8.0, 70),
    "severe": _fixed("severe", 8.0, 8.0, 12.0, 55),
    # DR2's synthetic test splits (Wang et al. 2023 sec. 4.1): bicubic down-sampling, noise drawn
    # from Gaussian, Laplace and Poisson; their three tasks r = 4, 8, 16 for mild, medium, severe
    "dr2-mild": _dr2("dr2-mild", (3.0, 5.0), 4.0, (5.0, 20.0), (60.0, 80.0)),
    "dr2-medium": _dr2("dr2-medium", (5.0, 7.0), 8.0, (15.0, 40.0), (40.0, 60.0)),
    "dr2-severe": _dr2("dr2-severe", (7.0, 9.0), 16.0, (25.0, 50.0), (30.0, 40.0)),
    # camera shake: eq. 11 with a motion-blur line instead of the Gaussian kernel
    "motion": DegradationSpec(name="motion", motion_prob=1.0, scale=(1.0, 4.0)),
    # a phone or compact camera in low light: signal-dependent noise in linear light, mild blur
    "camera": DegradationSpec(name="camera", sigma=(0.2, 2.0), scale=(1.0, 2.0), noise_kinds=("camera",), jpeg=(70.0, 95.0)),
    # an old scan: grayscale, blur, noise, compression
    "gray": DegradationSpec(name="gray", scale=(1.0, 4.0), gray_prob=1.0),
    # everything above mixed, for training models that meet all of it
    "mixed": DegradationSpec(name="mixed", blur_prob=0.9, motion_prob=0.2, interpolations=("bilinear", "bicubic", "area"),
                             noise_prob=0.9, noise_kinds=NOISE_KINDS, noise=(0.0, 25.0), jpeg_prob=0.9, jpeg=(30.0, 100.0),
                             gray_prob=0.1),
    # the identity: for checks (restoring clean images, the IDM authenticity criterion)
    "none": DegradationSpec(name="none", blur_prob=0.0, scale=(1.0, 1.0), noise_prob=0.0, jpeg_prob=0.0),
}


def preset(name: str) -> DegradationSpec:
    """A named spec, or a UsageError listing the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown degradation preset {name!r}", hint=f"choose one of: {', '.join(PRESETS)}") from None


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(low) if low == high else float(rng.uniform(low, high))


def _happens(rng: np.random.Generator, prob: float) -> bool:
    if prob >= 1.0:
        return True
    if prob <= 0.0:
        return False
    return bool(rng.random() < prob)


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else options[int(rng.integers(len(options)))]


def sample_params(rng: np.random.Generator, spec: DegradationSpec) -> DegradationParams:
    """Draw one image's parameters (the stages in pipeline order: blur, down, noise, JPEG, gray)."""
    values: dict[str, object] = {}
    if _happens(rng, spec.blur_prob):
        if _happens(rng, spec.motion_prob):
            values.update(blur="motion", motion_length=_uniform(rng, spec.motion_length), motion_angle=float(rng.uniform(0.0, 180.0)))
        else:
            values.update(blur="gaussian", sigma=_uniform(rng, spec.sigma))
    values["scale"] = _uniform(rng, spec.scale)
    values["interpolation"] = _choice(rng, spec.interpolations)
    if _happens(rng, spec.noise_prob):
        kind = _choice(rng, spec.noise_kinds)
        if kind == "camera":
            log_shot = float(rng.uniform(math.log(spec.camera_shot[0]), math.log(spec.camera_shot[1])))
            log_read = 2.18 * log_shot + 1.2 + float(rng.normal(0.0, 0.26))  # Brooks et al. 2019
            shot, read = math.exp(log_shot), math.exp(log_read)
            values.update(noise_kind=kind, shot=shot, read=read, noise=camera_noise_std(shot, read))
        else:
            delta = _uniform(rng, spec.noise)
            values.update(noise_kind=kind if delta > 0 else "none", noise=delta)
    if _happens(rng, spec.jpeg_prob):
        values["jpeg"] = int(round(_uniform(rng, spec.jpeg)))
    values["gray"] = _happens(rng, spec.gray_prob)
    return DegradationParams(**values)


# ---------------------------------------------------------------- stages (pure, float32 RGB [0,1])


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """k_sigma of IDM eq. 11: a 41x41 Gaussian (GFPGAN's kernel size), reflected borders."""
    return cv2.GaussianBlur(image.astype(np.float32), (BLUR_KERNEL_SIZE, BLUR_KERNEL_SIZE), sigma, borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line of `length` pixels through the centre at `angle` degrees (anti-aliased).

    Built by splatting densely spaced points of the segment bilinearly, so fractional lengths and
    any angle work; the kernel's second moment along the line is length^2 / 12 (a uniform segment).
    """
    length = max(float(length), 1.0)
    size = int(math.ceil(length)) // 2 * 2 + 3
    kernel = np.zeros((size, size), np.float64)
    c = size // 2
    theta = math.radians(angle)
    dx, dy = math.cos(theta), -math.sin(theta)  # image rows grow downwards
    n = max(2, int(math.ceil(length * 8)))
    for s in (np.arange(n) + 0.5) / n - 0.5:
        x, y = c + s * length * dx, c + s * length * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0, x0] += (1 - fx) * (1 - fy)
        kernel[y0, x0 + 1] += fx * (1 - fy)
        kernel[y0 + 1, x0] += (1 - fx) * fy
        kernel[y0 + 1, x0 + 1] += fx * fy
    return (kernel / kernel.sum()).astype(np.float32)


def motion_blur(image: np.ndarray, length: float, angle: float) -> np.ndarray:
    return cv2.filter2D(image.astype(np.float32), -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT_101)


def downsample(image: np.ndarray, scale: float, interpolation: str = "bilinear") -> np.ndarray:
    """Resize by 1/scale to (round(W / r), round(H / r)), at least 1x1."""
    height, width = image.shape[:2]
    if scale == 1.0:
        return image
    small = (max(1, round(width / scale)), max(1, round(height / scale)))
    return cv2.resize(image, small, interpolation=INTERPOLATIONS[interpolation])


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


def camera_noise_std(shot: float, read: float) -> float:
    """The sRGB std (0-255 scale) camera noise gives at mid-grey (first-order error propagation)."""
    linear = float(srgb_to_linear(np.float64(0.5)))
    slope = 1.055 / 2.4 * linear ** (1 / 2.4 - 1)  # d sRGB / d linear at that level
    return 255.0 * slope * math.sqrt(shot * linear + read)


def add_noise(image: np.ndarray, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """The noise stage n of eq. 11 for every kind; the result is clipped to [0, 1]."""
    kind, std = params.noise_kind, params.noise / 255.0
    x = image.astype(np.float32)
    if kind == "none" or (kind != "camera" and std <= 0):
        return x
    if kind == "gaussian":
        x = x + rng.normal(0.0, std, size=x.shape).astype(np.float32)
    elif kind == "laplace":
        x = x + rng.laplace(0.0, std / math.sqrt(2.0), size=x.shape).astype(np.float32)
    elif kind == "poisson":
        peak = 0.5 / std**2
        x = (rng.poisson(np.clip(x, 0.0, 1.0).astype(np.float64) * peak) / peak).astype(np.float32)
    elif kind == "camera":
        linear = srgb_to_linear(x.astype(np.float64))
        noisy = linear + rng.normal(0.0, 1.0, size=x.shape) * np.sqrt(params.shot * linear + params.read)
        x = linear_to_srgb(noisy).astype(np.float32)
    else:
        raise UsageError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    return np.clip(x, 0.0, 1.0)


def to_gray(image: np.ndarray) -> np.ndarray:
    """BT.601 luma in all three channels."""
    luma = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    return np.repeat(luma[..., None], 3, axis=-1).astype(np.float32)


def apply_degradation(image: np.ndarray, params: DegradationParams, rng: np.random.Generator) -> np.ndarray:
    """Degrade float32 RGB HxWx3 in [0,1]; same size out, in [0,1]. `rng` draws only the noise.

    With the parameters of an eq. 11 draw this equals `apply_eq11` (same operations, same order).
    """
    height, width = image.shape[:2]
    x = image.astype(np.float32)
    if params.blur == "gaussian":
        x = gaussian_blur(x, params.sigma)
    elif params.blur == "motion":
        x = motion_blur(x, params.motion_length, params.motion_angle)
    elif params.blur != "none":
        raise UsageError(f"unknown blur {params.blur!r}; choose none, gaussian or motion")
    x = downsample(x, params.scale, params.interpolation)
    x = add_noise(x, params, rng)
    if params.jpeg is not None:
        x = jpeg_compress(np.clip(x, 0.0, 1.0), params.jpeg)
    if x.shape[:2] != (height, width):
        up = cv2.INTER_CUBIC if params.interpolation == "bicubic" else cv2.INTER_LINEAR
        x = cv2.resize(x, (width, height), interpolation=up)
    x = np.clip(x, 0.0, 1.0)
    return to_gray(x) if params.gray else x


def degrade(image: np.ndarray, rng: np.random.Generator, spec: DegradationSpec | str = "eq11") -> tuple[np.ndarray, DegradationParams]:
    """Draw parameters from `spec` (a DegradationSpec or a preset name) and apply them."""
    if isinstance(spec, str):
        spec = preset(spec)
    params = sample_params(rng, spec)
    return apply_degradation(image, params, rng), params


__all__ = [
    "BLUR_KERNEL_SIZE", "DegradationParams", "DegradationSpec", "Eq11Params", "Eq11Ranges", "INTERPOLATIONS", "NOISE_KINDS",
    "PRESETS", "add_noise", "apply_degradation", "apply_eq11", "camera_noise_std", "degrade", "degrade_eq11", "downsample",
    "gaussian_blur", "jpeg_compress", "linear_to_srgb", "motion_blur", "motion_kernel", "preset", "sample_eq11",
    "sample_params", "srgb_to_linear", "to_gray",
]

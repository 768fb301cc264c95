"""Networks as nn.Modules with frozen config dataclasses; each config can be read back from a state dict.

- `guided_unet`: the guided-diffusion UNet of DifFace's 512 prior and DR2's 256 DDPM (also the
  conditional backbone for IDM-style models).
- `sparnet`: SPARNetHD2D, DR2's 512 enhancer, with spectral-norm convolutions.
- `swinir`: DifFace's SwinIR estimator, built on spandrel's SwinIR.
- `codeformer`: CodeFormer (VQGAN + transformer), key-identical to the published checkpoint, with
  code-level outputs for fine-tuning.
- `baseline_unet`: facerestore's own small one-step restorer.

Each module offers a config dataclass with presets for the official checkpoints, a constructor
taking only that config, and `infer_config(state_dict)`. Loading goes through
`facerestore.weights.checkpoint.load_strict`, which names the file and the first mismatched keys.
Nothing here reads files or downloads.
"""

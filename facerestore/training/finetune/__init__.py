"""Unpaired fine-tuning with a diffusion prior (Kuai et al., "Towards Unsupervised Blind Face
Restoration using Diffusion Prior", WACV 2025; code: SamsungLabs/DT-BFR; ANCHORS.md 7).

A pre-trained restorer R fails on degradations it never saw. With only the user's low-quality
faces y (no ground truth), the pipeline is:

    1. pseudo-targets  (`pseudo_targets.py`)   y0 = R(y); x_K = q_sample(y0, K);
                        DDPM steps of the DifFace 512 prior, with the low band of the sample replaced
                        by that of q_sample(y0, t) while t > L (paper Algorithm 1) -> x^_0
    2. fine-tuning      (`trainer.py`, `objectives.py`)   R on the pairs (y, x^_0):
                        CodeFormer: code-level losses on encoder + transformer (DT-BFR's recipe);
                        other one-step restorers: L1 + 0.1 LPIPS + 0.1 GAN against real faces (eq. 6-8)
    3. report           (`report.py`)   base vs fine-tuned on held-out faces: NIQE and a contact sheet

`run.py` chains the three for `facerestore finetune --unpaired LQ_DIR --out RUN`; stage 1 alone
is `facerestore finetune pseudo-targets LQ_DIR --out DIR`. docs/finetune.md is the user guide.
"""

"""CodeFormer on our own module: official key manifest, equivalence with spandrel-extra-arches'
module (the official architecture), round trips, the method on tiny checkpoints in the official format.

Cost note: a 512 input is expensive even for the smallest CodeFormer (every width is a multiple of
32 because of GroupNorm(32), and the 512 level keeps ~5 full-resolution convolutions): a [2,3,512,512]
batch takes ~8 s here on 2 busy cores. So the default run restores one 512 batch through the method
(plus one face alone), and checks batching and the fidelity knob through the method on a 64-pixel
tiny checkpoint (same code path, 64x cheaper); the same checks at 512, and the full-size comparison
with spandrel (about 1 min per forward pass), are marked slow.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from facerestore.errors import UnsupportedCheckpoint, UsageError
from facerestore.methods.base import MethodOptions
from facerestore.methods.codeformer import INFO, CodeFormerMethod
from facerestore.nets.codeformer import CodeFormer, CodeFormerConfig, infer_config
from facerestore.weights.checkpoint import load_strict
from helpers import seeded_state

pytestmark = pytest.mark.usefixtures("one_thread")

# The official layout scaled down. TINY_512 keeps six levels (512 -> 16x16 latent, 256 tokens) at the
# smallest widths GroupNorm(32) allows; TINY_64 is the same design at 64 pixels (three levels, also a
# 16x16 latent), with two res blocks per level and a fusion at the latent side (upstream's special case).
TINY_512 = CodeFormerConfig(nf=32, ch_mult=(1,) * 6, res_blocks=1, attn_resolutions=(16,), img_size=512, codebook_size=64, emb_dim=16,
                            dim_embd=32, n_head=8, n_layers=2, latent_size=256, connect_list=("16", "64", "128"))
TINY_64 = CodeFormerConfig(nf=32, ch_mult=(1, 1, 2), res_blocks=2, attn_resolutions=(16,), img_size=64, codebook_size=64, emb_dim=16,
                           dim_embd=32, n_head=8, n_layers=2, latent_size=256, connect_list=("16", "32", "64"))
TINY_OTHER = CodeFormerConfig(nf=32, ch_mult=(1, 2, 3, 3), res_blocks=3, attn_resolutions=(16, 8), img_size=64, codebook_size=40, emb_dim=24,
                              dim_embd=48, n_head=4, n_layers=3, latent_size=64, connect_list=("32", "8"))


# A face alone vs in a batch: same maths and the same codes, but batched convolution kernels order their
# sums differently; through ~40 random layers that reaches ~1.4e-4 on the [0,1] output at 512 (measured;
# ~1e-5 at 64). A real batching bug (faces mixing in a norm or in AdaIN) moves outputs by far more.
BATCH_ATOL = 5e-4


def seeded_net(config: CodeFormerConfig, seed: int = 0) -> CodeFormer:
    net = CodeFormer(config)
    return load_strict(net, seeded_state(net, seed)).eval()


def faces(config: CodeFormerConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Crops in [0,1] (the method's range), smooth enough to look like images rather than pure noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g)
    fine = torch.rand(batch, 3, config.img_size, config.img_size, generator=g)
    return (0.8 * F.interpolate(coarse, size=config.img_size, mode="bilinear", align_corners=False) + 0.2 * fine).clamp(0, 1)


def save_official_format(net: torch.nn.Module, path) -> None:
    """As upstream's checkpoints: torch.save({'params_ema': state_dict})."""
    torch.save({"params_ema": net.state_dict()}, path)


@pytest.fixture(scope="module")
def theirs_module():
    """spandrel-extra-arches' copy of the official architecture (its import takes seconds: once per module)."""
    import spandrel_extra_arches.architectures.CodeFormer.__arch.codeformer as reference

    return reference


# --- the official checkpoint's layout --------------------------------------------------------------


def test_full_size_manifest_matches_spandrel(theirs_module):
    """On the meta device (no memory): same keys, same order, same shapes; 515 tensors, 94.11M params."""
    with torch.device("meta"):
        theirs = theirs_module.CodeFormer()
        ours = CodeFormer(CodeFormerConfig.official())
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert list(got) == list(expected)
    assert got == expected
    assert len(got) == 515
    params = sum(v.numel() for v in ours.state_dict().values())
    assert params == sum(v.numel() for v in theirs.state_dict().values()) and round(params / 1e6, 2) == 94.11
    assert got["position_emb"] == (256, 512) and got["quantize.embedding.weight"] == (1024, 256)
    assert got["ft_layers.8.self_attn.in_proj_weight"] == (1536, 512) and got["idx_pred_layer.1.weight"] == (1024, 512)
    assert sorted({k.split(".")[1] for k in got if k.startswith("fuse_convs_dict.")}, key=int) == ["32", "64", "128", "256"]
    # upstream's hard-coded skip tables come out of our config-derived indices
    assert {str(s): i for s, i in ours.encoder.skip_index.items()} == theirs.fuse_encoder_block
    assert {str(s): i for s, i in ours.generator.fuse_index.items()} == theirs.fuse_generator_block
    assert {s: ours.config.width(s) for s in theirs.channels} == theirs.channels
    assert infer_config(ours.state_dict()) == CodeFormerConfig.official()


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CodeFormerConfig.official(), TINY_512, TINY_64, TINY_OTHER], ids=["official", "tiny512", "tiny64", "other"])
def test_infer_config_round_trip(config):
    """build -> state dict -> infer_config -> rebuild -> strict load -> same config (official one on meta)."""
    device = "meta" if config == CodeFormerConfig.official() else "cpu"
    with torch.device(device):
        net = CodeFormer(config)
    state = net.state_dict()
    inferred = infer_config(state, n_head=config.n_head)
    assert inferred == config
    with torch.device(device):
        again = CodeFormer(inferred)
    load_strict(again, state, "round-trip")
    assert again.config == config


def test_n_head_defaults_to_8_and_is_documented():
    """Heads share one in_proj matrix, so the shapes cannot tell them: infer_config says 8 unless told."""
    state = CodeFormer(TINY_OTHER).state_dict()
    assert infer_config(state).n_head == 8
    assert infer_config(state, n_head=4) == TINY_OTHER
    assert "n_head" in infer_config.__doc__


def test_tiny_round_trip_gives_the_same_outputs():
    net = seeded_net(TINY_64)
    again = load_strict(CodeFormer(infer_config(net.state_dict())), net.state_dict()).eval()
    x = faces(TINY_64) * 2 - 1
    with torch.no_grad():
        for a, b in zip(net(x, w=0.7), again(x, w=0.7)):
            assert torch.equal(a, b)


# --- component equivalence with the reference (fast; the whole net is compared in the slow test) ----


def _copy_into(ours: torch.nn.Module, theirs: torch.nn.Module, seed: int) -> None:
    load_strict(ours, seeded_state(ours, seed))
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_blocks_match_reference(theirs_module):
    from facerestore.nets import codeformer as ours_module

    g = torch.Generator().manual_seed(3)
    ref = theirs_module
    with torch.no_grad():
        # the transformer layer: theirs is sequence-first [L,B,C] on nn.MultiheadAttention, ours batch-first on SDPA
        layer, ref_layer = ours_module.TransformerLayer(64, 8, 128), ref.TransformerSALayer(64, nhead=8, dim_mlp=128, dropout=0.0)
        _copy_into(layer, ref_layer.eval(), 1)
        x, pos = torch.randn(3, 20, 64, generator=g), torch.randn(1, 20, 64, generator=g)
        expected = ref_layer(x.transpose(0, 1), query_pos=pos.transpose(0, 1).expand(20, 3, 64)).transpose(0, 1)
        torch.testing.assert_close(layer(x, pos), expected, rtol=1e-5, atol=1e-5)

        feat = torch.randn(2, 64, 8, 8, generator=g)
        for mine, theirs in [
            (ours_module.AttnBlock(64), ref.AttnBlock(64)),
            (ours_module.ResBlock(64, 32), ref.ResBlock(64, 32)),
            (ours_module.Downsample(64), ref.Downsample(64)),
            (ours_module.Upsample(64), ref.Upsample(64)),
        ]:
            _copy_into(mine, theirs, 2)
            torch.testing.assert_close(mine(feat), theirs(feat), rtol=1e-5, atol=1e-5, msg=type(mine).__name__)

        fuse, ref_fuse = ours_module.FuseSFT(32), ref.Fuse_sft_block(32, 32)
        _copy_into(fuse, ref_fuse, 4)
        enc, dec = torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 32, 8, 8, generator=g)
        torch.testing.assert_close(fuse(enc, dec, 0.6), ref_fuse(enc, dec, 0.6), rtol=1e-5, atol=1e-5)

        content, style = torch.randn(2, 16, 4, 4, generator=g), 3 * torch.randn(2, 16, 4, 4, generator=g) + 1
        torch.testing.assert_close(ours_module.adaptive_instance_norm(content, style), ref.adaptive_instance_normalization(content, style))

        # the codebook: nearest codes (the VQ quantiser) and code -> feature lookup
        net = seeded_net(TINY_64)
        quantizer = ref.VectorQuantizer(64, 16, 0.25)
        quantizer.embedding.weight.copy_(net.quantize.embedding.weight)
        lq_feat = torch.randn(2, 16, 16, 16, generator=g) / 4
        z_q, _, stats = quantizer(lq_feat)
        indices = net.nearest_codes(lq_feat)
        assert torch.equal(indices.flatten(), stats["min_encoding_indices"].flatten())
        assert torch.equal(net.codebook_features(indices), quantizer.get_codebook_feat(indices, shape=[2, 16, 16, 16]))
        torch.testing.assert_close(net.codebook_features(indices), z_q)  # z_q = z + (e - z).detach(): e up to rounding


# --- the method on tiny checkpoints in the official format -------------------------------------------


def test_method_restores_a_512_batch_from_a_tiny_official_format_checkpoint(tmp_path):
    net = seeded_net(TINY_512)
    path = tmp_path / "tiny_codeformer.pth"
    save_official_format(net, path)
    method = CodeFormerMethod(MethodOptions(weights=path))
    assert method.net.config == TINY_512 and method.fidelity == 0.5
    for key, value in net.state_dict().items():
        assert torch.equal(method.net.state_dict()[key], value), key

    crops = faces(TINY_512, batch=2)
    out = method.restore(crops)
    assert out.shape == (2, 3, 512, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.01 and not torch.equal(out[0], out[1])
    # batching does not change a face's result (up to float rounding of batched convolutions)
    torch.testing.assert_close(method.restore(crops[1:]), out[1:], rtol=0, atol=BATCH_ATOL)


def _tiny_method(tmp_path, config: CodeFormerConfig, fidelity: float, seed: int = 0) -> CodeFormerMethod:
    path = tmp_path / f"codeformer-{seed}.pth"
    if not path.exists():
        save_official_format(seeded_net(config, seed), path)
    return CodeFormerMethod(MethodOptions(weights=path, fidelity=fidelity))


def test_method_batch_equals_per_face_and_fidelity_matters(tmp_path):
    """On the 64-pixel tiny checkpoint (the same code path as 512, see the module docstring)."""
    crops = faces(TINY_64, batch=3)
    net = seeded_net(TINY_64)
    results = {}
    for w in (0.0, 0.5, 1.0):
        method = _tiny_method(tmp_path, TINY_64, w)
        batch = method.restore(crops)
        assert batch.shape == crops.shape and batch.min() >= 0 and batch.max() <= 1
        # the method is the net at w with adain, mapped [0,1] -> [-1,1] -> clamp -> [0,1]
        with torch.no_grad():
            expected = (net(crops * 2 - 1, w=w, adain=True)[0].clamp(-1, 1) + 1) / 2
        torch.testing.assert_close(batch, expected, rtol=0, atol=1e-6)
        for i in range(len(crops)):
            torch.testing.assert_close(method.restore(crops[i : i + 1]), batch[i : i + 1], rtol=0, atol=BATCH_ATOL)
        results[w] = batch
    for a, b in [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)]:
        assert (results[a] - results[b]).abs().max() > 1e-3, (a, b)


def test_a_model_of_another_size_restores_512_crops_at_its_own_scale(tmp_path):
    """`facerestore finetune --size 256` makes such models; the pipeline hands every method 512 crops."""
    method = _tiny_method(tmp_path, TINY_64, 0.5)
    crops = F.interpolate(faces(TINY_64, batch=2), size=512, mode="bilinear", align_corners=False)
    out = method.restore(crops)
    assert out.shape == (2, 3, 512, 512) and out.min() >= 0 and out.max() <= 1
    small = F.interpolate(crops * 2 - 1, size=64, mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        up = F.interpolate(method.net(small, w=0.5, adain=True)[0], size=512, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, (up.clamp(-1, 1) + 1) / 2, rtol=0, atol=1e-5)  # its own output at 64, enlarged


def test_fidelity_zero_skips_the_fusion_blocks():
    """w = 0 decodes from the codebook alone (upstream skips fuse_convs_dict); w > 0 uses them."""
    net, other = seeded_net(TINY_64, 0), seeded_net(TINY_64, 0)
    state = other.state_dict()
    for key in state:
        if key.startswith("fuse_convs_dict."):
            state[key] = state[key] * 1.5 + 0.1
    other.load_state_dict(state)
    x = faces(TINY_64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(net(x, w=0.0)[0], other(x, w=0.0)[0])
        assert not torch.allclose(net(x, w=1.0)[0], other(x, w=1.0)[0], atol=1e-3)
        # adain matches the looked-up codes' statistics to the encoder's: it changes the output
        assert not torch.allclose(net(x, w=0.0, adain=True)[0], net(x, w=0.0, adain=False)[0], atol=1e-3)


@pytest.mark.parametrize("fidelity", [-0.1, 1.01, 2.0, float("nan")])
def test_fidelity_outside_0_1_is_a_usage_error(tmp_path, fidelity):
    path = tmp_path / "codeformer.pth"
    save_official_format(CodeFormer(TINY_64), path)
    with pytest.raises(UsageError, match="--fidelity must be in \\[0,1\\]"):
        CodeFormerMethod(MethodOptions(weights=path, fidelity=fidelity))


def test_info_says_non_commercial():
    assert INFO.name == "codeformer" and not INFO.commercial_use
    assert "NTU S-Lab License 1.0" in INFO.license and "NON-COMMERCIAL" in INFO.license
    assert INFO.weights == ("codeformer",) and "fidelity" in INFO.knobs and "0.5" in INFO.knobs["fidelity"]


def test_fine_tuned_weights_by_registered_name(tmp_path, monkeypatch):
    """`--weights NAME`: a checkpoint registered with `weights import --name` loads by name (through the
    cache and its one-time safetensors conversion); the catalogue's `codeformer` is checked by sha256."""
    from facerestore.errors import ChecksumMismatch
    from facerestore.weights.store import import_file

    net = seeded_net(TINY_64, seed=3)
    path = tmp_path / "finetuned.pth"
    save_official_format(net, path)
    import_file(path, name="codeformer-ft")
    method = CodeFormerMethod(MethodOptions(weights="codeformer-ft", fidelity=0.0))
    for key, value in net.state_dict().items():
        assert torch.equal(method.net.state_dict()[key], value), key

    folder = tmp_path / "shared_weights"
    folder.mkdir()
    save_official_format(net, folder / "codeformer.pth")  # a stand-in under the official name
    monkeypatch.setenv("FACERESTORE_WEIGHTS", str(folder))
    with pytest.raises(ChecksumMismatch, match="codeformer"):
        CodeFormerMethod(MethodOptions(weights="codeformer"))


# --- loading the wrong thing --------------------------------------------------------------------------


def _refusal(path) -> str:
    with pytest.raises(UnsupportedCheckpoint) as info:
        CodeFormerMethod(MethodOptions(weights=path))
    line = info.value.one_line()
    assert "\n" not in line and str(path) in line
    return line


def test_truncated_file_gives_one_line(tmp_path):
    path = tmp_path / "codeformer.pth"
    save_official_format(CodeFormer(TINY_64), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "is truncated or damaged" in _refusal(path)


def test_missing_keys_are_named(tmp_path):
    state = CodeFormer(TINY_64).state_dict()
    dropped = ["generator.blocks.4.conv1.weight", "ft_layers.0.norm1.weight"]
    path = tmp_path / "codeformer-cut.pth"
    torch.save({"params_ema": {k: v for k, v in state.items() if k not in dropped}}, path)
    line = _refusal(path)
    assert "does not fit CodeFormer: missing 2:" in line
    assert all(key in line for key in dropped)


def test_wrong_shapes_are_named(tmp_path):
    state = CodeFormer(TINY_64).state_dict()
    state["idx_pred_layer.1.weight"] = torch.zeros(128, 32)  # a head for 128 codes with a 64-entry codebook
    path = tmp_path / "codeformer-mixed.pth"
    torch.save({"params_ema": state}, path)
    line = _refusal(path)
    assert "wrong shape 1: idx_pred_layer.1.weight (128, 32) != (64, 32)" in line


def test_other_architecture_is_refused(tmp_path):
    from facerestore.nets.guided_unet import GuidedUNet, UNetConfig

    other = GuidedUNet(UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_levels=(1,), num_head_channels=32)).state_dict()
    path = tmp_path / "not_codeformer.pth"
    torch.save({"params_ema": other}, path)
    line = _refusal(path)
    assert "is not a CodeFormer checkpoint (not a CodeFormer state dict: key 'position_emb' is missing" in line
    assert next(iter(other)) in line  # the file's first keys, to see what it is


def test_wrong_input_size_is_refused():
    with pytest.raises(ValueError, match=r"takes \[B,3,64,64\]"):
        CodeFormer(TINY_64)(torch.zeros(1, 3, 32, 32))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        CodeFormerConfig(nf=16)
    with pytest.raises(ValueError, match="latent_size"):
        CodeFormerConfig(latent_size=100)
    with pytest.raises(ValueError, match="connect_list"):
        CodeFormerConfig(connect_list=("24",))


# --- what fine-tuning needs (ANCHORS.md 7.2) -----------------------------------------------------------


def test_code_level_outputs_for_fine_tuning():
    """code_forward = forward's logits and lq_feat; targets are codebook features of nearest codes;
    the code-level losses train the encoder and the transformer only."""
    net = seeded_net(TINY_64).train()
    lq, target = faces(TINY_64, seed=5) * 2 - 1, faces(TINY_64, seed=6) * 2 - 1
    with torch.no_grad():
        _, logits_full, lq_full = net(lq, w=0.0)
        idx_gt = net.nearest_codes(net.encode(target))  # upstream: a frozen pre-trained copy does this
        quant_gt = net.codebook_features(idx_gt)
    assert idx_gt.shape == (2, 256) and idx_gt.dtype == torch.int64
    assert quant_gt.shape == (2, 16, 16, 16)
    assert torch.equal(quant_gt[1, :, 3, 5], net.quantize.embedding.weight[idx_gt[1, 3 * 16 + 5]])
    assert torch.equal(net.nearest_codes(quant_gt), idx_gt)  # a codebook vector is its own nearest code

    logits, lq_feat = net.code_forward(lq)
    assert logits.shape == (2, 256, 64) and lq_feat.shape == (2, 16, 16, 16)
    torch.testing.assert_close(logits, logits_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(lq_feat, lq_full, rtol=0, atol=1e-6)

    loss = F.mse_loss(lq_feat, quant_gt) + 0.5 * F.cross_entropy(logits.flatten(0, 1), idx_gt.flatten())
    loss.backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert grads["encoder.blocks.0.weight"].abs().sum() > 0
    assert grads["ft_layers.0.self_attn.in_proj_weight"].abs().sum() > 0 and grads["idx_pred_layer.1.weight"].abs().sum() > 0
    assert all(g is None for name, g in grads.items() if name.startswith(("generator.", "quantize.", "fuse_convs_dict.")))


@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=pytest.mark.slow),  # bf16 convolutions are emulated on this CPU: ~13 s for 2 tiny faces
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
])
def test_autocast_bfloat16(device):
    """The whole forward runs under bf16 autocast (no dtype clashes) and stays close to float32.

    A random tiny net has near-tied code logits, so a few codes flip in bf16 and the decoded image
    can move a lot locally: logits and lq_feat are compared closely, the image only for finiteness."""
    net = seeded_net(TINY_64)
    x = faces(TINY_64) * 2 - 1
    with torch.no_grad():
        _, ref_logits, ref_lq = net(x, w=0.5)
        net.to(device)
        with torch.autocast(device, dtype=torch.bfloat16):
            out, logits, lq_feat = net(x.to(device), w=0.5)
    out, logits, lq_feat = out.float().cpu(), logits.float().cpu(), lq_feat.float().cpu()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (logits - ref_logits).abs().mean() / ref_logits.abs().mean() < 0.05
    assert (lq_feat - ref_lq).abs().mean() / ref_lq.abs().mean() < 0.05
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean() > 0.9


# --- slow: the full-size net against spandrel, the method at 512 --------------------------------------


@pytest.mark.slow
def test_full_size_outputs_match_spandrel(theirs_module):
    """Seeded official-size net built by spandrel-extra-arches (on meta, then filled), its state dict
    loaded strictly into ours; one 512 face at w = 0.5 with adain (spandrel's fixed forward)."""
    with torch.device("meta"):
        theirs = theirs_module.CodeFormer()
        ours = CodeFormer(CodeFormerConfig.official())
    theirs = theirs.to_empty(device="cpu")
    theirs.load_state_dict(seeded_state(theirs, 0), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    theirs.eval(), ours.eval()
    torch.set_num_threads(2)
    x = faces(CodeFormerConfig.official(), batch=1) * 2 - 1
    with torch.inference_mode():
        expected_out, expected_logits = theirs(x, weight=0.5)
        out, logits, lq_feat = ours(x, w=0.5, adain=True)
    assert out.shape == (1, 3, 512, 512) and lq_feat.shape == (1, 256, 16, 16)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(-1), expected_logits.argmax(-1))
    scale = expected_out.abs().max()
    assert (out - expected_out).abs().max() <= 1e-5 * scale + 1e-5


@pytest.mark.slow
def test_method_at_512_batch_and_fidelity(tmp_path):
    crops = faces(TINY_512, batch=2, seed=7)
    results = {}
    for w in (0.0, 1.0):
        method = _tiny_method(tmp_path, TINY_512, w)
        batch = method.restore(crops)
        assert batch.min() >= 0 and batch.max() <= 1
        for i in range(2):
            torch.testing.assert_close(method.restore(crops[i : i + 1]), batch[i : i + 1], rtol=0, atol=BATCH_ATOL)
        results[w] = batch
    assert (results[0.0] - results[1.0]).abs().max() > 1e-3

"""--device resolution and how networks are placed for inference."""

from __future__ import annotations

import pytest
import torch

import facerestore.devices as devices
from facerestore.devices import autocast, autocast_dtype, for_inference, resolve_device, training_amp_dtype
from facerestore.errors import UsageError
from facerestore.nets.idm_unet import IDMUNet, idm_unet_config


def test_cpu_is_always_there_and_unknown_names_are_usage_errors():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("tpu")


def test_for_inference_gives_channels_last_weights_in_eval_mode_and_the_same_output():
    torch.manual_seed(0)
    net = IDMUNet(idm_unet_config("tiny", 32)).train()
    for p in net.parameters():  # an untrained residual net is exactly its input: make it do something
        p.data.add_(0.05 * torch.randn_like(p))
    x, gamma = torch.randn(2, 6, 32, 32), torch.tensor([0.3, 0.9])
    with torch.inference_mode():
        before = net.eval()(x, gamma)
    placed = for_inference(net.train(), "cpu")
    assert placed is net and not placed.training
    convs = [m.weight for m in placed.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    with torch.inference_mode():
        after = placed(x, gamma)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_face_noise_on_the_cpu_is_each_seeds_own_stream():
    from facerestore.methods.difface import face_generators, per_face_noise

    x = torch.zeros(2, 3, 8, 8)
    noise = per_face_noise(x, face_generators([7, 9], x.device))
    torch.testing.assert_close(noise[1:], torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(9)), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_face_noise_is_drawn_on_the_gpu_without_a_host_copy():
    from facerestore.methods.difface import face_generators, per_face_noise

    generators = face_generators([7, 9], "cuda")
    assert all(g.device.type == "cuda" for g in generators)
    x = torch.zeros(2, 3, 8, 8, device="cuda")
    noise = per_face_noise(x, generators)
    assert noise.device.type == "cuda"
    torch.testing.assert_close(noise[1:], per_face_noise(x[1:], face_generators([9], "cuda")), rtol=0, atol=0)


def test_precision_policy_on_the_cpu_and_mps():
    assert autocast_dtype("cpu", "auto") is None  # float32 unless asked: bf16 is only fast on some CPUs
    assert autocast_dtype("cpu", "fp32") is None
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert autocast_dtype("mps", "auto") is None
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("cpu", "fp16")
    with pytest.raises(UsageError, match="not supported on mps"):
        autocast_dtype("mps", "bf16")
    with pytest.raises(UsageError, match="not a precision"):
        autocast_dtype("cpu", "fp8")


@pytest.mark.parametrize("native", [True, False])
def test_fp16_on_the_cpu_suggests_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native):
    """The hint said 'use --precision bf16 on the CPU', which is slower than fp32 on CPUs without AMX or AVX512-BF16."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    with pytest.raises(UsageError) as refused:
        autocast_dtype("cpu", "fp16")
    hint = refused.value.hint
    assert hint.startswith("use --precision fp32 or auto"), hint
    if native:
        assert "bf16 (this CPU runs it natively: faster)" in hint
    else:
        assert "bf16 would be slower: this CPU has no AMX or AVX512-BF16" in hint


@pytest.mark.parametrize("has_bf16", [True, False])
def test_precision_policy_on_cuda(monkeypatch, has_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    assert autocast_dtype("cuda", "auto") is (torch.bfloat16 if has_bf16 else torch.float16)
    assert autocast_dtype("cuda", "auto", auto_on_cuda=False) is None  # methods not measured on GPUs
    assert autocast_dtype("cuda:1", "fp16") is torch.float16
    assert autocast_dtype("cuda", "fp32") is None
    if has_bf16:
        assert autocast_dtype("cuda", "bf16", auto_on_cuda=False) is torch.bfloat16
    else:
        with pytest.raises(UsageError, match="no bf16"):
            autocast_dtype("cuda", "bf16")


def test_autocast_context_runs_convolutions_in_the_dtype_and_none_leaves_float32():
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)
    with autocast("cpu", torch.bfloat16):
        assert conv(x).dtype is torch.bfloat16
    with autocast("cpu", None):
        assert conv(x).dtype is torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_training_amp_on_the_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert training_amp_dtype("cpu", False) == (None, None)  # not asked: float32, nothing to say
    dtype, why = training_amp_dtype("cpu", True)
    if native:
        assert (dtype, why) == (torch.bfloat16, None)
    else:
        assert dtype is None and "no AMX or AVX512-BF16" in why and "float32" in why
    dtype, why = training_amp_dtype("cpu", True, cpu=False)  # a trainer where it was not measured
    assert dtype is None and "no effect on the CPU" in why
    assert training_amp_dtype("mps", True)[0] is None


@pytest.mark.parametrize("has_bf16", [True, False])
def test_training_amp_on_cuda(monkeypatch, has_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    assert training_amp_dtype("cuda", True) == (torch.bfloat16 if has_bf16 else torch.float16, None)
    dtype, why = training_amp_dtype("cuda:0", True, fp16=False)  # no loss scaler: fp16 is not offered
    assert dtype is (torch.bfloat16 if has_bf16 else None) and (why is None) == has_bf16


def test_the_cpu_probe_answers_a_bool():
    assert devices.cpu_has_native_bf16() in (True, False)


def test_the_bf16_tip_is_for_auto_on_a_native_cpu_and_measured_methods_only(monkeypatch):
    from facerestore.devices import cpu_bf16_tip

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert "bundled idm model 1.6x faster" in cpu_bf16_tip("cpu", "auto", "idm")
    assert cpu_bf16_tip("cpu", "fp32", "idm") is None  # the user chose
    assert cpu_bf16_tip("cpu", "auto", "codeformer") is None  # bf16 quality not measured for it
    assert cpu_bf16_tip("cuda", "auto", "idm") is None  # auto already uses bf16 there
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert cpu_bf16_tip("cpu", "auto", "baseline") is None  # emulated bf16 is slower


def test_folding_batch_norms_keeps_the_output_of_a_retinaface():
    """facexlib's mobile0.25 RetinaFace, random weights and running statistics: every one of its 47
    BatchNorms follows a convolution, and folding them changes the outputs by float rounding only."""
    import torch
    from facexlib.detection.retinaface import RetinaFace

    from facerestore.devices import fold_batch_norms

    torch.manual_seed(0)
    net = RetinaFace(network_name="mobile0.25", half=False, phase="test", device="cpu").eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.rand(1, 3, 96, 128) * 255 - 110
    with torch.inference_mode():
        before = net(x)
        assert fold_batch_norms(net) == 47
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)

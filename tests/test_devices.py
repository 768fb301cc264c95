"""--device resolution and how networks are placed for inference."""

from __future__ import annotations

import pytest
import torch

from facerestore.devices import for_inference, resolve_device
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

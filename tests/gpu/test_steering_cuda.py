"""A steered torchvision network on CUDA: the numbers of the CPU, exact ReLU once the hooks are removed, and K
profiles in one pass equal to one profile at a time."""

from __future__ import annotations

import copy

import ct_tune
from ct_tune.steering import split, stack

import pytest
import torch
import torchvision

pytestmark = pytest.mark.gpu


@pytest.fixture
def no_tf32():
    """Convolutions in full float32 (cuDNN uses TF32 by default): CPU and GPU then agree to ~1e-5."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def test_a_steered_resnet_on_cuda_matches_the_cpu(no_tf32):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(8, 3, 64, 64)
    profile = {"layer1.0": 0.8, "layer2.1": 0.9, "layer4.0": 0.95}
    on_cpu = copy.deepcopy(model)
    with ct_tune.steer(on_cpu, profile, granularity="block", example_input=x[:1]), torch.no_grad():
        expected = on_cpu(x)
    on_gpu = model.cuda()
    plain = on_gpu(x.cuda()).detach()
    handle = ct_tune.steer(on_gpu, profile, granularity="block", example_input=x[:1].cuda())
    with torch.no_grad():
        steered = on_gpu(x.cuda())
    scale = expected.abs().max()
    assert float((steered.cpu() - expected).abs().max() / scale) < 1e-4
    assert float((steered - plain).abs().max() / scale) > 1e-3  # steering changed something
    handle.remove()
    assert torch.equal(on_gpu(x.cuda()).detach(), plain)  # exactly the plain network again


def test_k_profiles_in_one_pass_equal_one_at_a_time_on_cuda(no_tf32):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).cuda().eval()
    x = torch.rand(4, 3, 32, 32, device="cuda")
    profiles = [{"layer1.0": 0.7}, {"layer3.1": 0.9, "layer4.1": 0.8}, {}]
    handle = ct_tune.steer(model, 1.0, granularity="block", example_input=x[:1])
    with torch.no_grad():
        one_by_one = []
        for betas in profiles:
            handle.update(betas)
            one_by_one.append(model(x))
        handle.update_batched(profiles)
        together = split(model(stack(x, len(profiles))), len(profiles))
    handle.remove()
    for k, expected in enumerate(one_by_one):
        torch.testing.assert_close(together[k], expected, rtol=1e-4, atol=1e-5)

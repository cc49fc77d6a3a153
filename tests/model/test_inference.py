"""BN folding and channels-last (model/inference.py) give the plain modules' features and ranks."""

import copy

import numpy as np
import pytest
import torch

from config import get_cfg_defaults
from model.inference import fold_batchnorms, fold_conv_bn, prepare_for_inference
from test.build import build_descriptor
from test.data.synthetic import random_resnet, textured_image


def random_lite0_descriptor(seed=0):
    """Lite0 descriptor with random weights and random (positive-variance) BN statistics."""
    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE = "EFFICIENTNET_LITE0"
    descriptor = build_descriptor(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in descriptor.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return descriptor.eval()


def resnet_descriptor():
    descriptor = build_descriptor(get_cfg_defaults())
    descriptor.backbone.load_state_dict(random_resnet(50, seed=3).state_dict())
    return descriptor


def images(count=6, size=(96, 128), seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([torch.from_numpy((textured_image(size[1], size[0], rng, i).transpose(2, 0, 1)
                                          .astype(np.float64) / 255 - 0.45) / 0.225) for i in range(count)])


BUILDERS = {"resnet50": (resnet_descriptor, 53), "lite0": (random_lite0_descriptor, 49)}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_folded_features_equal_plain_in_float64(name):
    build, pairs = BUILDERS[name]
    plain = build().double()
    folded = copy.deepcopy(plain)
    assert fold_batchnorms(folded) == pairs
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = images()
    with torch.inference_mode():  # the descriptor ends in float32, so compare the backbones' pooled maps
        a, b = (model.backbone(x).clamp(min=1e-6).pow(3).mean((2, 3)) for model in (plain, folded))
    assert a.dtype == torch.float64
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert cosine.min().item() >= 1 - 1e-9
    # the same ranking of a small database by each query
    assert torch.equal(torch.argsort(-(a[:2] @ a.T), dim=1), torch.argsort(-(b[:2] @ b.T), dim=1))
    # the plain model's tensors are untouched (copy) and keep the names the weights load by
    assert "backbone.stem.bn.running_var" in plain.state_dict() or "backbone._bn0.running_var" in plain.state_dict()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_folded_channels_last_float32_stays_close(name):
    build, _ = BUILDERS[name]
    plain = build()
    prepared = prepare_for_inference(copy.deepcopy(plain), fold_bn=True, channels_last=True)
    assert prepared.backbone.s1.b1.f.a.weight.is_contiguous(memory_format=torch.channels_last) \
        if name == "resnet50" else prepared.backbone._conv_head.weight.is_contiguous(memory_format=torch.channels_last)
    x = images().float()
    with torch.inference_mode():
        a = plain(x)
        b = prepared(x.contiguous(memory_format=torch.channels_last))
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    assert cosine.min().item() >= 1 - 1e-5


def test_fold_conv_bn_matches_the_bn_formula_with_a_conv_bias():
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3, bias=True).double(), torch.nn.BatchNorm2d(4, eps=1e-3).double()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    expected = (conv(x) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 1e-3) \
        * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    fold_conv_bn(conv, bn)
    torch.testing.assert_close(conv(x), expected, rtol=1e-12, atol=1e-12)


def test_folding_needs_eval_mode():
    model = build_descriptor(get_cfg_defaults()).train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(model)

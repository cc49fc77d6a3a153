"""Precision plans (model/precision.py): which modules run in which dtype under bf16, and fp32 untouched."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from config import get_cfg_defaults
from model.precision import Fp32Island, PrecisionPlan, apply_precision_plan
from model.registry import BACKBONES
from test.build import build_descriptor
from test.extraction.extract import autocast_context, extract_features, with_precision_plan
from test.extraction.runtime import ExtractOptions


def descriptor_of(name, depth=50):
    """An untrained descriptor whose BN layers get random statistics, so images differ in its output."""
    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE, cfg.MODEL.DEPTH, cfg.TEST.SCALE_LIST = name, depth, 1
    descriptor = build_descriptor(cfg)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in descriptor.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return descriptor


def conv_dtypes(model, images, precision):
    """{conv name (as in the plain module): dtype of its output} for one forward pass."""
    seen, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            plain = name.replace(".module", "")
            hooks.append(module.register_forward_hook(lambda m, a, out, plain=plain: seen.update({plain: out.dtype})))
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        model(images)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_plan_runs_its_modules_in_fp32_and_the_rest_in_bf16(name):
    descriptor = descriptor_of(name)
    plan = descriptor.precision_plan
    assert plan is BACKBONES[name].precision_plan
    planned = apply_precision_plan(descriptor, plan)
    dtypes = conv_dtypes(planned, torch.randn(1, 3, 64, 80), "bf16")
    assert dtypes, "no convolution ran"
    kept = {n for n in dtypes if any(plan.matches(".".join(n.split(".")[:i]))
                                     for i in range(1, n.count(".") + 2))}
    for conv, dtype in dtypes.items():
        assert dtype == (torch.float32 if conv in kept else torch.bfloat16), conv
    assert len(kept) < len(dtypes)  # the rest still runs reduced
    # the caller's module is left as it was: no island inside it
    assert not any(isinstance(m, Fp32Island) for m in descriptor.modules())


def test_lite0_plan_keeps_the_sensitive_early_layers_in_fp32():
    descriptor = descriptor_of("EFFICIENTNET_LITE0")
    dtypes = conv_dtypes(apply_precision_plan(descriptor, descriptor.precision_plan),
                         torch.randn(1, 3, 64, 80), "bf16")
    assert dtypes["backbone._conv_stem"] == torch.float32
    assert dtypes["backbone._blocks.0._depthwise_conv"] == torch.float32
    assert dtypes["backbone._conv_head"] == torch.bfloat16  # the wide, costly head runs reduced


def test_island_runs_fp32_inside_autocast_and_accepts_reduced_input():
    conv = nn.Conv2d(3, 4, 3).eval()
    island = Fp32Island(conv)
    x = torch.randn(1, 3, 8, 8)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = island(x.bfloat16())
        plain = conv(x)
    assert out.dtype == torch.float32 and plain.dtype == torch.bfloat16
    with torch.inference_mode():
        torch.testing.assert_close(out, conv(x.bfloat16().float()), rtol=0, atol=0)


def test_a_pattern_that_names_nothing_is_refused():
    with pytest.raises(ValueError, match="match no module"):
        apply_precision_plan(descriptor_of("EFFICIENTNET_LITE0"), PrecisionPlan(("backbone.no_such_layer",)))


def test_fp32_extraction_is_untouched_by_the_plan():
    descriptor = descriptor_of("EFFICIENTNET_LITE0")
    assert with_precision_plan(descriptor, descriptor, "fp32") is descriptor
    images = [(i, torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)) for i in range(3)]
    options = ExtractOptions(batch_size=2, num_workers=0)
    with_plan = extract_features(descriptor, images, "cpu", options=options)
    descriptor.precision_plan = None
    without = extract_features(descriptor, images, "cpu", options=options)
    assert np.array_equal(with_plan, without)


def test_bf16_extraction_applies_the_plan_and_warns_when_declared(capsys):
    descriptor = descriptor_of("EFFICIENTNET_LITE0")
    images = [(i, torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)) for i in range(2)]
    options = ExtractOptions(batch_size=2, num_workers=0)
    planned = extract_features(descriptor, images, "cpu", precision="bf16", options=options)
    descriptor.precision_plan = PrecisionPlan(descriptor.precision_plan.fp32, warning="costs 1 mAP here")
    warned = extract_features(descriptor, images, "cpu", precision="bf16", options=options)
    assert "warning: TEST.PRECISION bf16: costs 1 mAP here" in capsys.readouterr().out
    assert np.array_equal(planned, warned)
    descriptor.precision_plan = None
    plain = extract_features(descriptor, images, "cpu", precision="bf16", options=options)
    assert not np.array_equal(planned, plain)  # the islands change what bf16 computes

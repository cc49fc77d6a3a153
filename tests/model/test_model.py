"""The descriptor network against an independent functional re-computation from the raw tensors.

The reference below re-derives the paper's pipeline with torch.nn.functional only, reading the
checkpoint tensors by their CVNet names, so it checks naming, strides, ReLU+ placement (including
the official stage-1 quirk), Regional-GeM, GeM+, Scale-GeM and the multi-scale resize.
"""

import pytest
import torch
import torch.nn.functional as F

from config import get_cfg_defaults
from model.resnet import ResNet
from model.superglobal import resize_for_scale
from modules.coarse_retrieval import ReLUPlus
from test.build import build_descriptor
from test.data.synthetic import random_resnet

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def ref_backbone(w, x, depth, relup, quirk, alpha=0.014):
    def bn(t, name):
        return F.batch_norm(t, w[name + ".running_mean"], w[name + ".running_var"], w[name + ".weight"],
                            w[name + ".bias"], False, 0.0, 1e-5)

    def clamp(t):
        return torch.maximum(t, torch.tensor(alpha))

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, w["stem.conv.weight"], stride=2, padding=3), "stem.bn")), 3, 2, 1)
    for stage, (blocks, stride) in enumerate(zip(DEPTHS[depth], (1, 2, 2, 2)), start=1):
        inner = clamp if stage == 1 and (relup or quirk) else F.relu
        outer = clamp if relup and stage <= 3 else F.relu
        for b in range(1, blocks + 1):
            p = f"s{stage}.b{b}."
            s = stride if b == 1 else 1
            y = inner(bn(F.conv2d(x, w[p + "f.a.weight"]), p + "f.a_bn"))
            y = inner(bn(F.conv2d(y, w[p + "f.b.weight"], stride=s, padding=1), p + "f.b_bn"))
            y = bn(F.conv2d(y, w[p + "f.c.weight"]), p + "f.c_bn")
            shortcut = bn(F.conv2d(x, w[p + "proj.weight"], stride=s), p + "bn") if b == 1 else x
            x = outer(shortcut + y)
    return x


def ref_regional_gem(x, p=2.5, size=5):
    padded = F.pad(x / (size * size) ** (1 / p), (size // 2,) * 4, mode="reflect")
    lp = (F.avg_pool2d(padded.pow(p), size, stride=1) * size * size).pow(1 / p)
    return 0.5 * lp + 0.5 * x


def ref_descriptor(w, image, depth, scales, gemp, rgem, sgem, relup, quirk=True):
    outputs = []
    for scale in scales:
        h, w_ = image.shape[-2:]
        scaled = F.interpolate(image, size=(int(h * scale), int(w_ * scale)), mode="bilinear",
                               align_corners=False, antialias=False)
        fmap = ref_backbone(w, scaled, depth, relup, quirk)
        if rgem:
            fmap = ref_regional_gem(fmap)
        p, eps = (4.6, 1e-8) if gemp else (w["head.pool.p"], 1e-6)
        pooled = fmap.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1 / p)
        pooled = pooled / pooled.norm(dim=1, keepdim=True)
        outputs.append(pooled @ w["head.fc.weight"].T + w["head.fc.bias"])
    if sgem:
        combined = torch.stack([o / o.norm(dim=1, keepdim=True) for o in outputs]).amax(0)
    else:
        combined = torch.stack(outputs).mean(0)
    return combined / combined.norm(dim=1, keepdim=True)


def descriptor_for(weights_model, **supg):
    cfg = get_cfg_defaults()
    for key, value in supg.items():
        if key == "SCALE_LIST":
            cfg.TEST.SCALE_LIST = value
        else:
            cfg.SupG[key] = value
    descriptor = build_descriptor(cfg)
    descriptor.backbone.load_state_dict(weights_model.state_dict())
    return descriptor


@pytest.fixture(scope="module")
def weights_model():
    return random_resnet(50, seed=3)


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return torch.randn(2, 3, 100, 131)  # conv5 maps of at least 3x3 at every scale


@pytest.mark.parametrize("flags", [
    dict(gemp=True, rgem=True, sgem=True, relup=True),
    dict(gemp=False, rgem=False, sgem=False, relup=False),
    dict(gemp=True, rgem=False, sgem=True, relup=False),
    dict(gemp=False, rgem=True, sgem=False, relup=True),
    dict(gemp=True, rgem=True, sgem=True, relup=False, relup_stage1_quirk=False),
])
def test_descriptor_matches_functional_reference(weights_model, image, flags):
    descriptor = descriptor_for(weights_model, **flags)
    with torch.inference_mode():
        ours = descriptor(image)
    reference = ref_descriptor(weights_model.state_dict(), image, 50, [0.7071, 1.0, 1.4142],
                               flags["gemp"], flags["rgem"], flags["sgem"], flags["relup"],
                               flags.get("relup_stage1_quirk", True))
    assert ours.shape == (2, 2048)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(2))


def test_relup_placement_counts():
    def clamps(model):
        return sum(isinstance(m, ReLUPlus) for m in model.modules())

    # stage 1 has 3 blocks: 2 inner clamps each; stages 1-3 of R50 have 3 + 4 + 6 block outputs
    assert clamps(ResNet(50, relup=True)) == 3 * 2 + 13
    assert clamps(ResNet(50, relup=False, stage1_quirk=True)) == 3 * 2
    assert clamps(ResNet(50, relup=False, stage1_quirk=False)) == 0
    assert clamps(ResNet(101, relup=True)) == 3 * 2 + 3 + 4 + 23
    assert all(not isinstance(m, ReLUPlus) for m in ResNet(50, relup=True).s4.modules())


def test_parameter_names_follow_pycls():
    names = set(ResNet(50).state_dict())
    for name in ["stem.conv.weight", "stem.bn.running_var", "s1.b1.proj.weight", "s1.b1.bn.weight",
                 "s1.b1.f.a.weight", "s1.b1.f.a_bn.bias", "s2.b1.f.b.weight", "s4.b3.f.c_bn.weight",
                 "head.fc.weight", "head.fc.bias", "head.pool.p"]:
        assert name in names
    assert not any(name.startswith("s1.b2.proj") for name in names)
    model = ResNet(50)
    assert model.s2.b1.f.b.stride == (2, 2) and model.s2.b1.f.a.stride == (1, 1)
    assert len(list(ResNet(101).s3.children())) == 23


def test_resize_uses_truncated_sizes_and_no_antialias():
    x = torch.arange(2 * 3 * 10 * 7, dtype=torch.float32).reshape(2, 3, 10, 7)
    y = resize_for_scale(x, 0.7071)
    assert y.shape[-2:] == (int(10 * 0.7071), int(7 * 0.7071))
    torch.testing.assert_close(y, F.interpolate(x, size=(7, 4), mode="bilinear", align_corners=False))
    assert resize_for_scale(x, 1.0) is x
    assert resize_for_scale(torch.zeros(1, 3, 1, 1), 0.5).shape[-2:] == (1, 1)


def test_tiny_images_do_not_crash(weights_model):
    descriptor = descriptor_for(weights_model)
    with torch.inference_mode():
        out = descriptor(torch.randn(1, 3, 1, 1))
    assert torch.isfinite(out).all() and out.shape == (1, 2048)

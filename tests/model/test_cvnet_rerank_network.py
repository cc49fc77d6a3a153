"""CVNet-Rerank's network pieces against direct dense computations, and its strict weight loading.

Facts (sungonce/CVNet model/base/conv4d.py, correlation.py, geometry.py): a center-pivot 4-D
convolution is the 4-D convolution whose kernel is zero outside the two 2-D planes through its
centre (HSNet), with strides (q, q, k, k) and padding kernel // 2; a correlation is the cosine
a.b / (|a| |b| + 1e-8) of every query position with every key position, each 4-D correlation is
resized bilinearly with align_corners=True to the full-scale size, and the nine are clamped at 0.
"""

import numpy as np
import pytest
import torch

from errors import UserError
from model.cvnet_rerank import (
    CenterPivotConv4d,
    CVNetRerank,
    ScaledFeatures,
    build_cvnet_rerank,
    load_rerank_weights,
    scaled_size,
)
from test.data.synthetic import cvnet_state, random_resnet


def dense_conv4d(x, weight4d, bias, strides, pad):
    """Plain 4-D convolution, one kernel offset at a time: (B, C, a1, a2, b1, b2) float64."""
    x = np.pad(x, [(0, 0), (0, 0)] + [(pad, pad)] * 4)
    bsz, _, *size = x.shape
    kernel = weight4d.shape[2:]
    out_size = [(n - k) // s + 1 for n, k, s in zip(size, kernel, strides)]
    out = np.zeros((bsz, weight4d.shape[0], *out_size))
    for offset in np.ndindex(*kernel):
        window = x[(slice(None), slice(None), *(slice(o, o + s * (n - 1) + 1, s)
                                                for o, s, n in zip(offset, strides, out_size)))]
        out += np.einsum("oc,bcijkl->boijkl", weight4d[(slice(None), slice(None), *offset)], window)
    return out + bias[None, :, None, None, None, None]


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2)])
def test_center_pivot_conv4d_is_a_4d_conv_with_a_cross_shaped_kernel(kernel, stride):
    torch.manual_seed(kernel * 10 + stride)
    conv = CenterPivotConv4d(3, 4, kernel, stride, stride).double()
    x = torch.randn(2, 3, 5, 6, 7, 4, dtype=torch.float64)
    c = kernel // 2
    w1, w2 = conv.conv1.weight.detach().numpy(), conv.conv2.weight.detach().numpy()
    weight4d = np.zeros((4, 3) + (kernel,) * 4)
    weight4d[:, :, :, :, c, c] += w1                     # query plane through the key centre
    weight4d[:, :, c, c, :, :] += w2                     # key plane through the query centre
    bias = (conv.conv1.bias + conv.conv2.bias).detach().numpy()
    expected = dense_conv4d(x.numpy(), weight4d, bias, (stride,) * 4, c)
    with torch.no_grad():
        np.testing.assert_allclose(conv(x).numpy(), expected, rtol=1e-10, atol=1e-10)


def bilinear_matrix(n_out, n_in):
    """align_corners=True: output i samples input i * (n_in - 1) / (n_out - 1)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        m[i, lo] += 1 - (src - lo)
        m[i, hi] += src - lo
    return m


def direct_correlation(q_maps, k_maps, full):
    """Nine cosine correlations, each resized to `full` = (hq, wq, hk, wk) and clamped, in float64."""
    out = []
    for q in q_maps:                                       # (C, h, w) per scale
        for k in k_maps:
            qf, kf = q.reshape(q.shape[0], -1), k.reshape(k.shape[0], -1)
            cos = (qf.T @ kf) / (np.linalg.norm(qf, axis=0)[:, None] * np.linalg.norm(kf, axis=0)[None] + 1e-8)
            cos = cos.reshape(*q.shape[1:], *k.shape[1:])
            mats = [bilinear_matrix(n, m) for n, m in zip(full, cos.shape)]
            out.append(np.einsum("ai,bj,ck,dl,ijkl->abcd", *mats, cos))
    return np.maximum(np.stack(out), 0)


def features(maps):
    flat = [torch.from_numpy(m).reshape(1, m.shape[0], -1) for m in maps]
    return ScaledFeatures(flat, [f.norm(p=2, dim=1, keepdim=True) for f in flat], [m.shape[1:] for m in maps])


def test_cross_scale_correlation_equals_the_direct_computation():
    rng = np.random.default_rng(0)
    q_maps = [rng.standard_normal((6, *scaled_size(5, 7, s))) for s in (0.25, 0.5, 1.0)]
    k_maps = [rng.standard_normal((6, *scaled_size(4, 6, s))) for s in (0.25, 0.5, 1.0)]
    corr = CVNetRerank.correlation(features(q_maps), features(k_maps))
    assert corr.shape == (1, 9, 5, 7, 4, 6)
    np.testing.assert_allclose(corr[0].numpy(), direct_correlation(q_maps, k_maps, (5, 7, 4, 6)), atol=1e-12)


def test_scaled_sizes_use_pythons_round():
    # sqrt(0.25) = 0.5: 5 * 0.5 = 2.5 -> 2 and 3 * 0.5 = 1.5 -> 2 (round half to even)
    assert scaled_size(5, 3, 0.25) == (2, 2)
    assert scaled_size(64, 48, 0.5) == (45, 34) and scaled_size(64, 48, 1.0) == (64, 48)


def test_correlation_map_is_the_last_stage3_residual_sum_before_relu():
    model = build_cvnet_rerank(50)
    model.backbone.load_state_dict(random_resnet(50, seed=1).state_dict())
    net, images = model.backbone, torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        fmap = model.correlation_map(images)
        before = net.s2(net.s1(net.stem(images)))
        for block in list(net.s3.children())[:-1]:
            before = block(before)
        last = net.s3.b6
        residual_sum = last.bn(last.proj(before)) if last.proj_block else before
        residual_sum = residual_sum + last.f(before)
        stage3 = net.s3(net.s2(net.s1(net.stem(images))))
    assert fmap.shape == (1, 1024, 4, 6) and (fmap < 0).any()     # before the ReLU
    torch.testing.assert_close(fmap, residual_sum, rtol=0, atol=0)
    torch.testing.assert_close(fmap.clamp(min=0), stage3, rtol=0, atol=0)


@pytest.fixture(scope="module")
def checkpoint_state():
    return cvnet_state(random_resnet(50, seed=4), rerank_seed=4)


def save(path, state):
    torch.save({"model_state": state}, path)
    return path


def test_loads_every_reranking_tensor(tmp_path, checkpoint_state):
    model = build_cvnet_rerank(50)
    load_rerank_weights(model, save(tmp_path / "w.pyth", checkpoint_state))
    loaded = model.state_dict()
    for key in ("conv2ds.2.weight", "cv_learner.block4.6.conv2.bias", "cv_learner.mlp.2.weight"):
        assert torch.equal(loaded[key], checkpoint_state[key])
    assert torch.equal(loaded["backbone.s3.b6.f.c.weight"], checkpoint_state["encoder_q.s3.b6.f.c.weight"])


@pytest.mark.parametrize("change,fragment", [
    (lambda s: {k: v for k, v in s.items() if not k.startswith(("conv2ds", "cv_learner"))},
     "no CVNet-Rerank weights (conv2ds.*, cv_learner.*)"),
    (lambda s: {k: v for k, v in s.items() if k != "cv_learner.block2.0.conv1.weight"},
     "1 missing, 0 of another shape, 0 unexpected: cv_learner.block2.0.conv1.weight"),
    (lambda s: {**s, "conv2ds.1.weight": torch.zeros(128, 1024, 3, 3)},
     "conv2ds.1.weight (128, 1024, 3, 3) vs (256, 1024, 3, 3)"),
    (lambda s: {**s, "conv2ds.3.weight": torch.zeros(256, 1024, 3, 3)}, "unexpected conv2ds.3.weight"),
    (lambda s: {**s, "cv_learner.mlp.0.bias": torch.zeros(128, dtype=torch.int64)}, "not a plain floating-point"),
])
def test_refuses_reranking_weights_that_do_not_fit(tmp_path, checkpoint_state, change, fragment):
    path = save(tmp_path / "w.pyth", change(dict(checkpoint_state)))
    with pytest.raises(UserError) as error:
        load_rerank_weights(build_cvnet_rerank(50), path)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_refuses_a_depth_that_is_not_the_checkpoints(tmp_path, checkpoint_state):
    path = save(tmp_path / "w.pyth", checkpoint_state)
    with pytest.raises(UserError, match="look like ResNet-50 but MODEL.DEPTH is 101"):
        load_rerank_weights(build_cvnet_rerank(101), path)

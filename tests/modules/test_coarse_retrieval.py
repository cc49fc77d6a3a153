"""modules.coarse_retrieval against independent loop / closed-form computations on tiny inputs."""
import itertools

import pytest
import torch
import torch.nn as nn

from modules.coarse_retrieval import GeMPlus, RegionalGeM, ReLUPlus, ScaleGeM, gemp, relup, rgem, sgem


def feature_map(*shape, seed=0):
    torch.manual_seed(seed)
    return torch.rand(*shape, dtype=torch.float64) + 0.01


def test_gem_plus_matches_loop_formula():
    x = feature_map(2, 3, 4, 5) - 0.3  # some negatives, which the clamp floors at eps
    p, eps = 4.6, 1e-8
    out = GeMPlus()(x)
    expected = torch.empty(2, 3, dtype=x.dtype)
    for b, c in itertools.product(range(2), range(3)):
        values = [max(v, eps) ** p for v in x[b, c].flatten().tolist()]
        expected[b, c] = (sum(values) / len(values)) ** (1 / p)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(GeMPlus()(x.flatten(2)), expected)  # (B, C, L) input


def reflect(i, n):
    return -i if i < 0 else 2 * (n - 1) - i if i >= n else i


def replicate(i, n):
    return min(max(i, 0), n - 1)


def regional_gem_loop(x, p, size, index):
    """y = 0.5 * (mean of x^p over the size x size window, padded by ``index``)^(1/p) + 0.5 * x."""
    half = (size - 1) // 2
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    for b, c, h, w in itertools.product(range(B), range(C), range(H), range(W)):
        window = [x[b, c, index(h + dh, H), index(w + dw, W)].item() ** p
                  for dh in range(-half, half + 1) for dw in range(-half, half + 1)]
        y[b, c, h, w] = 0.5 * (sum(window) / size ** 2) ** (1 / p) + 0.5 * x[b, c, h, w]
    return y


def test_regional_gem_matches_reflected_window_loop():
    x = feature_map(2, 2, 6, 7)
    torch.testing.assert_close(RegionalGeM()(x), regional_gem_loop(x, 2.5, 5, reflect))
    torch.testing.assert_close(RegionalGeM(p=3.0, size=3)(x), regional_gem_loop(x, 3.0, 3, reflect))


def test_regional_gem_is_bit_identical_to_official_composition():
    x = feature_map(1, 4, 5, 9).float()
    official = 0.5 * nn.LPPool2d(2.5, 5, stride=1)(nn.ReflectionPad2d(2)(x / 25 ** (1 / 2.5))) + 0.5 * x
    assert torch.equal(RegionalGeM()(x), official)


def test_regional_gem_tiny_map_is_identity_for_1x1():
    x = feature_map(2, 3, 1, 1)
    torch.testing.assert_close(RegionalGeM()(x), x)


@pytest.mark.parametrize('shape', [(2, 2), (1, 6), (6, 1), (1, 2)])
def test_regional_gem_tiny_maps_use_replicate_padding(shape):
    x = feature_map(1, 2, *shape)
    out = RegionalGeM()(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, regional_gem_loop(x, 2.5, 5, replicate))


def test_regional_gem_3x3_map_keeps_reflection():
    x = feature_map(1, 2, 3, 3)
    torch.testing.assert_close(RegionalGeM()(x), regional_gem_loop(x, 2.5, 5, reflect))


def test_scale_gem_infinity_is_max_of_normalised():
    scales = [feature_map(3, 8, seed=s) - 0.5 for s in range(3)]
    expected = torch.stack([s / s.norm(dim=1, keepdim=True) for s in scales]).amax(0)
    torch.testing.assert_close(ScaleGeM()(scales), expected)
    torch.testing.assert_close(ScaleGeM()(torch.stack(scales)), expected)


def test_scale_gem_power_formula():
    scales = [feature_map(2, 4, seed=s) - 0.5 for s in range(3)]
    p = 3.0
    gamma = min(v for s in scales for v in s.flatten().tolist())
    expected = torch.empty(2, 4, dtype=torch.float64)
    for b, d in itertools.product(range(2), range(4)):
        mean = sum((s[b, d].item() - gamma) ** p for s in scales) / len(scales)
        expected[b, d] = mean ** (1 / p) + gamma
    torch.testing.assert_close(ScaleGeM(p=p)(scales), expected)


def test_relu_plus_floors_at_alpha():
    x = torch.tensor([-1.0, 0.0, 0.01, 0.014, 0.5])
    assert torch.equal(ReLUPlus()(x), torch.tensor([0.014, 0.014, 0.014, 0.014, 0.5]))


def test_official_aliases():
    x = feature_map(2, 3, 6, 6)
    scales = [feature_map(2, 5, seed=s) for s in range(3)]
    assert gemp is GeMPlus and relup is ReLUPlus
    assert gemp(p=4.6, eps=1e-8)(x).shape == (2, 3)
    assert torch.equal(relup(alpha=0.1)(x - 0.5), ReLUPlus(0.1)(x - 0.5))
    assert torch.equal(rgem(pr=2.5, size=5)(x), RegionalGeM(p=2.5, size=5)(x))
    assert torch.equal(sgem()(scales), ScaleGeM()(scales))
    assert torch.equal(sgem(ps=10., infinity=False)(scales), ScaleGeM(p=10.)(scales))
    assert sgem(ps=10., infinity=True).p == float('inf')

"""The pycls ResNet that CVNet uses, with its parameter names, so CVNet checkpoints load as they are.

Naming (pycls): stem `conv`/`bn`; stages `s1`..`s4` of bottleneck blocks `b1`..`bN`; a block has
`proj` + `bn` when its shape changes and `f` = `a` (1x1), `a_bn`, `b` (3x3, carries the stride),
`b_bn`, `c` (1x1), `c_bn`; head `head.fc` and `head.pool.p` (CVNet's learned GeM power).

ReLU+ placement follows the official SuperGlobal code: after the residual addition of every block in
stages 1-3 when `relup` is on (stage 4 keeps a plain ReLU), and inside the stage-1 bottlenecks (after
`a_bn` and `b_bn`) when `relup` is on or `stage1_quirk` is set. The official code clamps there even
with ReLU+ switched off; `stage1_quirk=True` keeps that so ablation numbers match the paper.
"""

import torch
import torch.nn as nn

from model.backbone import RetrievalBackbone
from modules.coarse_retrieval import ReLUPlus

STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BN_EPS = 1e-5


def _activation(clamp, alpha):
    return ReLUPlus(alpha) if clamp else nn.ReLU(inplace=True)


class ResStem(nn.Module):
    """7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool."""

    def __init__(self, w_in, w_out):
        super().__init__()
        self.conv = nn.Conv2d(w_in, w_out, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(w_out, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        return self.pool(self.relu(self.bn(self.conv(x))))


class BottleneckTransform(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1, with BN after each and activations between."""

    def __init__(self, w_in, w_out, stride, w_b, inner_clamp, alpha):
        super().__init__()
        self.a = nn.Conv2d(w_in, w_b, 1, stride=1, bias=False)
        self.a_bn = nn.BatchNorm2d(w_b, eps=BN_EPS)
        self.a_relu = _activation(inner_clamp, alpha)
        self.b = nn.Conv2d(w_b, w_b, 3, stride=stride, padding=1, bias=False)
        self.b_bn = nn.BatchNorm2d(w_b, eps=BN_EPS)
        self.b_relu = _activation(inner_clamp, alpha)
        self.c = nn.Conv2d(w_b, w_out, 1, stride=1, bias=False)
        self.c_bn = nn.BatchNorm2d(w_out, eps=BN_EPS)

    def forward(self, x):
        x = self.a_relu(self.a_bn(self.a(x)))
        x = self.b_relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class ResBlock(nn.Module):
    """Residual bottleneck block: x + f(x), with a projection when the shape changes."""

    def __init__(self, w_in, w_out, stride, w_b, inner_clamp, out_clamp, alpha):
        super().__init__()
        self.proj_block = (w_in != w_out) or (stride != 1)
        if self.proj_block:
            self.proj = nn.Conv2d(w_in, w_out, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(w_out, eps=BN_EPS)
        self.f = BottleneckTransform(w_in, w_out, stride, w_b, inner_clamp, alpha)
        self.relu = _activation(out_clamp, alpha)

    def forward(self, x):
        shortcut = self.bn(self.proj(x)) if self.proj_block else x
        return self.relu(shortcut + self.f(x))


class ResStage(nn.Module):
    """`depth` blocks `b1`..`bN`; the first one carries the stride."""

    def __init__(self, w_in, w_out, stride, depth, w_b, inner_clamp, out_clamp, alpha):
        super().__init__()
        for i in range(depth):
            block = ResBlock(w_in if i == 0 else w_out, w_out, stride if i == 0 else 1,
                             w_b, inner_clamp, out_clamp, alpha)
            self.add_module(f"b{i + 1}", block)

    def forward(self, x):
        for block in self.children():
            x = block(x)
        return x


class GeneralizedMeanPoolingP(nn.Module):
    """CVNet's GeM with a learned power `p` (checkpoint key `head.pool.p`), over all positions."""

    def __init__(self, norm=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * norm)
        self.eps = eps

    def forward(self, x):
        x = x.clamp(min=self.eps).pow(self.p)
        return x.flatten(2).mean(-1).pow(1.0 / self.p)


class GlobalHead(nn.Module):
    """CVNet's global head: learned GeM pooling and a whitening fully-connected layer."""

    def __init__(self, w_in, nc):
        super().__init__()
        self.pool = GeneralizedMeanPoolingP(norm=3.0)
        self.fc = nn.Linear(w_in, nc, bias=True)


class ResNet(RetrievalBackbone):
    """CVNet ResNet-50/101 backbone (conv5 feature map) plus its global head's parameters."""

    def __init__(self, depth=50, reduction_dim=2048, relup=True, relup_alpha=0.014, stage1_quirk=True):
        super().__init__()
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
        d1, d2, d3, d4 = STAGE_DEPTHS[depth]
        self.depth = depth
        self.stem = ResStem(3, 64)
        self.s1 = ResStage(64, 256, 1, d1, 64, relup or stage1_quirk, relup, relup_alpha)
        self.s2 = ResStage(256, 512, 2, d2, 128, False, relup, relup_alpha)
        self.s3 = ResStage(512, 1024, 2, d3, 256, False, relup, relup_alpha)
        self.s4 = ResStage(1024, 2048, 2, d4, 512, False, False, relup_alpha)
        self.head = GlobalHead(2048, reduction_dim)

    def forward_features(self, x):
        """Image batch (B, 3, H, W) -> conv5 feature map (B, 2048, H/32, W/32)."""
        return self.s4(self.s3(self.s2(self.s1(self.stem(x)))))


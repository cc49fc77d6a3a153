"""Regional-GeM : local L_p pooling over size x size windows, mixed with the input.

    y = 0.5 * LPPool_{p,size,stride 1}( pad(x) / (size^2)^(1/p) ) + 0.5 * x
      = 0.5 * ( 1/size^2 * sum_{v in window(u)} x_v^p )^(1/p) + 0.5 * x_u

``pad`` is reflection padding of (size - 1) // 2 on every side, so an odd ``size`` keeps the
shape: input (B, C, H, W), output (B, C, H, W). Inputs are expected non-negative (the map
after ReLU+), as for any fractional p.

Tiny maps: reflection padding needs a pad smaller than H and W, which fails for the 1x1 or 2x2
conv5 maps of tiny images or crops. For such an input only, replicate padding is used instead:
the shape is kept and a 1x1 map is returned unchanged (the window holds size^2 copies of x, so
the L_p term is x and y = x). Every other input takes the exact official path.
Official SuperGlobal class: ``rgem(pr=2.5, size=5)``, provided here under that name.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class RegionalGeM(nn.Module):
    """Regional GeM (official ``rgem``), (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, p: float = 2.5, size: int = 5):
        super().__init__()
        self.p = p
        self.size = int(size)
        self.padding = (self.size - 1) // 2
        self.lppool = nn.LPPool2d(p, self.size, stride=1)
        self.pad = nn.ReflectionPad2d(self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_scaled = x / (self.size ** 2) ** (1.0 / self.p)
        if self.padding < min(x.shape[-2:]):
            padded = self.pad(x_scaled)
        else:
            padded = F.pad(x_scaled, [self.padding] * 4, mode='replicate')
        return 0.5 * self.lppool(padded) + 0.5 * x

    def extra_repr(self) -> str:
        return f'p={self.p}, size={self.size}'


class rgem(RegionalGeM):
    """The official constructor signature, ``rgem(pr=2.5, size=5)``."""

    def __init__(self, pr: float = 2.5, size: int = 5):
        super().__init__(p=pr, size=size)
        self.pr = pr

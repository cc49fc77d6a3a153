"""Scale-GeM : fuses the descriptors of one image computed at several scales.

p = inf (paper default):  out = max_s ( x_s / ||x_s||_2 )                (element-wise max)
finite p (ablation):      out = ( 1/S * sum_s (x_s - gamma)^p )^(1/p) + gamma,
                          gamma = min over all of x                       (no normalisation)

Input: a list of S tensors (B, D) or a stacked tensor (S, B, D); output (B, D).
Official SuperGlobal class: ``sgem(ps=10., infinity=True)``, provided here under that name.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScaleGeM(nn.Module):
    """Multi-scale descriptor fusion, S x (B, D) -> (B, D)."""

    def __init__(self, p: float = float('inf')):
        super().__init__()
        self.p = p

    def forward(self, x) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.stack(list(x), 0)
        if math.isinf(self.p):
            return F.normalize(x, p=2, dim=-1).max(0)[0]
        gamma = x.min()
        return (x - gamma).pow(self.p).mean(0).pow(1.0 / self.p) + gamma

    def extra_repr(self) -> str:
        return f'p={self.p}'


class sgem(ScaleGeM):
    """The official constructor: ``sgem()`` is the max version, ``sgem(ps, infinity=False)`` the power one."""

    def __init__(self, ps: float = 10.0, infinity: bool = True):
        super().__init__(p=float('inf') if infinity else ps)
        self.ps = ps
        self.infinity = infinity

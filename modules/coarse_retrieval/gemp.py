"""GeM+ : generalized-mean pooling with the SuperGlobal exponent.

    f_c = ( 1/|Omega| * sum_{u in Omega} max(x_{c,u}, eps)^p )^(1/p)

Input (B, C, H, W) or (B, C, L); output (B, C).
Official SuperGlobal class: ``gemp`` (p=4.6, eps=1e-8).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class GeMPlus(nn.Module):
    """GeM pooling over all spatial positions, (B, C, ...) -> (B, C)."""

    def __init__(self, p: float = 4.6, eps: float = 1e-8):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).clamp(min=self.eps).pow(self.p)
        # adaptive_avg_pool1d, as in the official code, so results are bit-identical to it.
        return F.adaptive_avg_pool1d(x, 1).squeeze(-1).pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f'p={self.p}, eps={self.eps}'


gemp = GeMPlus

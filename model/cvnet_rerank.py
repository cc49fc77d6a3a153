"""CVNet-Rerank (Correlation Verification Networks, CVPR 2022): the two-stage baseline's verifier.

What is computed for a query image q and a database image k (sungonce/CVNet, model/
CVNet_Rerank_model.py, model/CVlearner.py, model/base/{conv4d,correlation,feature,geometry}.py):

1. Correlation feature map: the plain CVNet ResNet (no ReLU+) up to the last block of stage 3, taken
   after its residual addition and before its ReLU: (1, 1024, h, w), h, w = image size / 16.
2. Three scales s in (0.25, 0.5, 1.0): the map is resized (bilinear, align_corners=True) to
   (round(h * sqrt(s)), round(w * sqrt(s))) (Python's round) and passed through `conv2ds[i]`
   (3x3, 1024 -> 256, no bias).
3. Nine correlations, query scale outer, key scale inner: cosine of every query position with every
   key position, `a.b / (|a| |b| + 1e-8)`; each resized to the full-scale 4-D size (hq, wq, hk, wk)
   (bilinear, align_corners=True, first the query dims, then the key dims); stacked as 9 channels
   and clamped at 0: (B, 9, hq, wq, hk, wk).
4. `cv_learner`: four blocks of center-pivot 4-D convolutions + GroupNorm(4) + ReLU, the mean over
   the 4-D positions, an MLP (128 -> 128 -> 2); the score is softmax(logits)[:, 1].

A center-pivot 4-D convolution with kernel k and strides (sq, sk) is the sum of a 2-D convolution
over the query dims applied at every sk-th key position and a 2-D convolution over the key dims
applied at every sq-th query position (HSNet).

Module and parameter names follow CVNet's, so its checkpoints load as they are: `conv2ds.{0,1,2}`,
`cv_learner.block{1..4}.{i}.conv{1,2}`, `cv_learner.mlp.{0,2}`; the backbone is model/resnet.py's.
"""

import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from errors import UserError
from model.checkpoint import (
    WEIGHTS_URL_HINT,
    check_float_tensors,
    checkpoint_path,
    load_weights,
    read_state_dict,
    strip_prefixes,
)
from model.cvnet_global import build_cvnet_global

SCALES = (0.25, 0.5, 1.0)
CORR_EPS = 1e-8
FEATURE_DIM = 1024       # stage-3 channels of ResNet-50/101
COMPRESSED_DIM = 256     # conv2ds output channels
RERANK_KEY = re.compile(r"(conv2ds|cv_learner)\.")


class CenterPivotConv4d(nn.Module):
    """4-D convolution of (B, C, ha, wa, hb, wb) as two pivoted 2-D convolutions (see module doc).

    `conv1` slides over the query dims (a), `conv2` over the key dims (b); the output is
    (B, C', ha', wa', hb', wb') with the usual strided-convolution sizes."""

    def __init__(self, in_channels, out_channels, kernel, query_stride, key_stride):
        super().__init__()
        self.query_stride, self.key_stride = query_stride, key_stride
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel, stride=query_stride, padding=kernel // 2)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel, stride=key_stride, padding=kernel // 2)

    def forward(self, x):
        pruned = x[..., ::self.key_stride, ::self.key_stride]  # the key positions conv1 is applied at
        bsz, ch, ha, wa, hb, wb = pruned.shape
        out1 = self.conv1(pruned.permute(0, 4, 5, 1, 2, 3).reshape(-1, ch, ha, wa))
        out1 = out1.view(bsz, hb, wb, *out1.shape[-3:]).permute(0, 3, 4, 5, 1, 2)
        pruned = x[:, :, ::self.query_stride, ::self.query_stride]
        bsz, ch, ha, wa, hb, wb = pruned.shape
        out2 = self.conv2(pruned.permute(0, 2, 3, 1, 4, 5).reshape(-1, ch, hb, wb))
        out2 = out2.view(bsz, ha, wa, *out2.shape[-3:]).permute(0, 3, 1, 2, 4, 5)
        return (out1 + out2).contiguous()


def _block(in_channels, layers):
    """Sequential of (CenterPivotConv4d, GroupNorm(4), ReLU) per (out, kernel, stride) in `layers`."""
    modules = []
    for out_channels, kernel, stride in layers:
        modules += [CenterPivotConv4d(in_channels, out_channels, kernel, stride, stride),
                    nn.GroupNorm(4, out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    return nn.Sequential(*modules)


class CVLearner(nn.Module):
    """(B, 9, hq, wq, hk, wk) correlations -> (B, 2) logits (CVNet's CVLearner, channels 16-128)."""

    def __init__(self, in_channels=len(SCALES) ** 2):
        super().__init__()
        self.block1 = _block(in_channels, [(16, 5, 2)])
        self.block2 = _block(16, [(16, 3, 1), (32, 3, 2)])
        self.block3 = _block(32, [(32, 3, 1), (32, 3, 1), (64, 3, 2)])
        self.block4 = _block(64, [(64, 3, 1), (64, 3, 1), (128, 3, 1)])
        self.mlp = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))

    def forward(self, corr):
        out = self.block4(self.block3(self.block2(self.block1(corr))))
        return self.mlp(out.flatten(2).mean(-1))


def scaled_size(height, width, scale):
    """CVNet's map size at `scale` (an area ratio): Python's round of each side times sqrt(scale)."""
    return round(height * math.sqrt(scale)), round(width * math.sqrt(scale))


def interpolate4d(corr, size):
    """(B, h1, w1, h2, w2) -> (B, *size): bilinear (align_corners=True) over the first two dims,
    then over the last two, as CVNet's Geometry.interpolate4d."""
    bsz, h1, w1, h2, w2 = corr.shape
    ha, wa, hb, wb = size
    if (h1, w1) != (ha, wa):  # same size: align_corners maps every sample onto itself, an identity
        corr = F.interpolate(corr.reshape(bsz, h1, w1, h2 * w2).permute(0, 3, 1, 2), (ha, wa), mode="bilinear",
                             align_corners=True).reshape(bsz, h2, w2, ha, wa).permute(0, 3, 4, 1, 2)
    if (h2, w2) != (hb, wb):
        corr = F.interpolate(corr.reshape(bsz, ha * wa, h2, w2), (hb, wb), mode="bilinear", align_corners=True)
    return corr.reshape(bsz, ha, wa, hb, wb)


class ScaledFeatures:
    """One image's three compressed maps, ready to correlate: per scale `flat` (B, 256, n) and
    `norm` (B, 1, n), n = positions at that scale, `sizes` [(h, w)] per scale. B = 1 for one image;
    `stack` joins images whose maps have the same size."""

    def __init__(self, flat, norm, sizes):
        self.flat, self.norm, self.sizes = flat, norm, sizes

    @property
    def full_size(self):
        return self.sizes[-1]

    def nbytes(self):
        return sum(t.element_size() * t.nelement() for t in (*self.flat, *self.norm))

    @staticmethod
    def stack(items):
        return ScaledFeatures([torch.cat(parts) for parts in zip(*(i.flat for i in items))],
                              [torch.cat(parts) for parts in zip(*(i.norm for i in items))], items[0].sizes)


class CVNetRerank(nn.Module):
    """CVNet-Rerank: `score(query, keys)` of prepared images; `forward(q_img, k_img)` the plain
    one-pair path (CVNet's `forward`). The backbone is CVNet's plain ResNet of `depth`."""

    def __init__(self, depth=50):
        super().__init__()
        self.depth = depth
        self.backbone = build_cvnet_global(depth)
        self.conv2ds = nn.ModuleList(nn.Conv2d(FEATURE_DIM, COMPRESSED_DIM, 3, padding=1, bias=False)
                                     for _ in SCALES)
        self.cv_learner = CVLearner()
        self.eval()

    def correlation_map(self, images):
        """(B, 3, H, W) normalised images -> (B, 1024, h, w): the last stage-3 block's residual sum,
        before its ReLU."""
        net = self.backbone
        x = net.s2(net.s1(net.stem(images)))
        *blocks, last = net.s3.children()
        for block in blocks:
            x = block(x)
        shortcut = last.bn(last.proj(x)) if last.proj_block else x
        return last.f(x) + shortcut

    def scaled(self, fmap):
        """(B, 1024, h, w) correlation maps -> ScaledFeatures (conv2ds at the three scales)."""
        height, width = fmap.shape[-2:]
        flat, norm, sizes = [], [], []
        for scale, conv in zip(SCALES, self.conv2ds):
            size = scaled_size(height, width, scale)
            out = conv(F.interpolate(fmap, size, mode="bilinear", align_corners=True))
            out = out.flatten(2)
            flat.append(out)
            norm.append(out.norm(p=2, dim=1, keepdim=True))
            sizes.append(size)
        return ScaledFeatures(flat, norm, sizes)

    def prepare(self, images):
        """(B, 3, H, W) images of one size -> their ScaledFeatures."""
        return self.scaled(self.correlation_map(images))

    @staticmethod
    def correlation(query, keys):
        """One query's and B keys' ScaledFeatures -> (B, 9, hq, wq, hk, wk) clamped correlations."""
        size = (*query.full_size, *keys.full_size)
        bsz = keys.flat[0].shape[0]
        out = []
        for q_flat, q_norm, (hq, wq) in zip(query.flat, query.norm, query.sizes):
            q_rows, q_norm_rows = q_flat.transpose(1, 2), q_norm.transpose(1, 2)  # (1, n_q, C), (1, n_q, 1)
            for k_flat, k_norm, (hk, wk) in zip(keys.flat, keys.norm, keys.sizes):
                corr = torch.matmul(q_rows, k_flat) / (q_norm_rows * k_norm + CORR_EPS)
                out.append(interpolate4d(corr.view(bsz, hq, wq, hk, wk), size))
        return torch.stack(out, dim=1).clamp(min=0)

    def score(self, query, keys):
        """Scores in [0, 1] of B keys for one query: (B,) tensor."""
        return torch.softmax(self.cv_learner(self.correlation(query, keys)), dim=1)[:, 1]

    def forward(self, query_image, key_image):
        """The plain path of one pair, everything recomputed: (1, 3, H, W) each -> (1,) score."""
        return self.score(self.prepare(query_image), self.prepare(key_image))


def rerank_state_keys(model):
    """The checkpoint keys of the reranking head (conv2ds, cv_learner) with their shapes."""
    return {k: v.shape for k, v in model.state_dict().items() if RERANK_KEY.match(k)}


def load_rerank_weights(model, weights, depth=None):
    """Load a CVNet checkpoint (file or directory) into a CVNetRerank: the backbone as
    model.checkpoint.load_weights does, and every `conv2ds.*` / `cv_learner.*` tensor with its exact
    shape. Returns the file; anything missing or misshaped stops with one UserError line."""
    depth = depth if depth is not None else model.depth
    path = checkpoint_path(weights, depth)
    load_weights(model.backbone, path, depth)
    state = strip_prefixes(read_state_dict(path))
    expected = rerank_state_keys(model)
    present = [k for k in state if RERANK_KEY.match(k)]
    if not present:
        raise UserError(f"{path}: no CVNet-Rerank weights (conv2ds.*, cv_learner.*): CVNET.RERANK needs the "
                        f"full CVNet checkpoint (CVPR2022_CVNet_R{depth}.pyth), not a backbone-only file: "
                        f"{WEIGHTS_URL_HINT}")
    check_float_tensors(path, state, list(expected))
    missing = [k for k in expected if k not in state]
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(shape)}" for k, shape in expected.items()
                 if k in state and state[k].shape != shape]
    unexpected = [k for k in present if k not in expected]
    if missing or misshaped or unexpected:
        names = missing + misshaped + [f"unexpected {k}" for k in unexpected]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{path}: the CVNet-Rerank weights do not fit ({len(missing)} missing, {len(misshaped)} of "
                        f"another shape, {len(unexpected)} unexpected: {shown}); is it a CVNet ResNet-{depth} "
                        "checkpoint?")
    bad = [k for k in expected if not torch.isfinite(state[k].float()).all()]
    if bad:
        raise UserError(f"{path}: {len(bad)} tensors hold NaN or Inf (first: {bad[0]}); the file is corrupt")
    model.load_state_dict({**{f"backbone.{k}": v for k, v in model.backbone.state_dict().items()},
                           **{k: state[k] for k in expected}})
    return path


def build_cvnet_rerank(depth=50):
    """An untrained CVNetRerank in eval mode."""
    return CVNetRerank(depth).eval()

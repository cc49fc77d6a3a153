"""Every default of the project, in one yacs config, and the command-line parser that overrides it.

Command lines are yacs `KEY VALUE` pairs. A boolean key followed by another key, or last on the
line, means True, so the paper's own line works as pasted:

    python test.py MODEL.DEPTH 50 TEST.WEIGHTS ./weights SupG.gemp SupG.rgem SupG.onemeval False

Each default below carries a one-line comment; `python test.py --help` prints them.
"""

import ast
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from yacs.config import CfgNode

from errors import UserError, is_utf8, readable_file

_C = CfgNode()
cfg = _C

_C.MODEL = CfgNode()
_C.MODEL.TYPE = "RESNET"  # backbone: RESNET (the CVNet ResNet) or EFFICIENTNET_LITE0 (demo model, docs/demo.md)
_C.MODEL.DEPTH = 50  # ResNet depth of the CVNet backbone: 50 or 101
_C.MODEL.HEADS = CfgNode()
_C.MODEL.HEADS.REDUCTION_DIM = 2048  # output dimension of head.fc (CVNet: 2048; EFFICIENTNET_LITE0 ignores it: 1280)

_C.TEST = CfgNode()
_C.TEST.WEIGHTS = "./weights"  # CVNet checkpoint file or a directory holding CVPR2022_CVNet_R{depth}.pyth (Lite0: auto)
_C.TEST.DATA_DIR = "./revisitop"  # revisitop root: <DATA_DIR>/<dataset>/jpg/ and gnd_<dataset>.pkl
_C.TEST.DATASET_LIST = ["roxford5k", "rparis6k"]  # datasets in order: revisitop names, custom:<folder>, gldv2:<root>
_C.TEST.DESCRIPTOR = "superglobal"  # superglobal (the paper), or cvnet: CVNet's own global pipeline (CVNet-Global rows)
_C.TEST.CVNET_UPSCALE = "linear"  # cvnet descriptor: cv2 upscaling above scale 1: linear (CVNet's) or cubic
_C.TEST.SCALE_LIST = 3  # 1: [1.0]; 3: [0.7071, 1.0, 1.4142]; 5: [0.5, 0.7071, 1.0, 1.4142, 2.0]
_C.TEST.BATCH_SIZE = 0  # images of one size per forward pass (0 = auto: CPU 1, CUDA 16; 1 = official one-by-one)
_C.TEST.NUM_WORKERS = -1  # DataLoader processes decoding images (-1 = auto from the usable cores; 0 = main process)
_C.TEST.NUM_THREADS = 0  # intra-op threads (0 = auto: the usable cores on CPU, those left by the workers on CUDA)
_C.TEST.FOLD_BN = "auto"  # fold BatchNorm into the convs for inference (auto = on; off runs the plain modules)
_C.TEST.CHANNELS_LAST = "auto"  # channels-last (NHWC) activations (auto = on: faster on CPU and CUDA), on, off
_C.TEST.PIN_MEMORY = "auto"  # pinned host memory in the loader (auto = on with CUDA), on, off
_C.TEST.NON_BLOCKING = "auto"  # non-blocking host-to-device copies (auto = on with CUDA), on, off
_C.TEST.UINT8_TRANSFER = "auto"  # ship uint8 images, normalise on the device (auto = on; off: in the loader)
_C.TEST.PRECISION = "fp32"  # fp32 (the reproduction setting); bf16 (CPU or CUDA) or fp16 (CUDA) autocast
_C.TEST.SAVE_FEATURES = False  # write <OUT_DIR>/<dataset>.npz with Q, X, ranks_global, ranks, mAPs
_C.TEST.CACHE = True  # reuse features extracted before with the same weights, flags, scales and images
_C.TEST.CACHE_DIR = ""  # feature cache directory; empty means <OUT_DIR>/feature_cache
_C.TEST.TOPK = 400  # with onemeval or gldv2: rank positions kept per query (at least SupG.M)
_C.TEST.VIS_QUERIES = 0  # pictures (<OUT_DIR>/pictures/<dataset>/) of: N (first N queries), helped:N, hurt:N, names:a,b
_C.TEST.VIS_TOPK = 8  # results per row in those pictures (before and after reranking)

_C.SupG = CfgNode()
_C.SupG.gemp = True  # GeM+: GeM with fixed power SupG.gemp_p instead of the learned one
_C.SupG.rgem = True  # Regional-GeM on the last feature map before pooling
_C.SupG.sgem = True  # Scale-GeM: max over L2-normalised per-scale descriptors (else their mean)
_C.SupG.relup = True  # ReLU+: clamp at SupG.relup_alpha after the residual addition of stages 1-3 (Lite0: head)
_C.SupG.rerank = True  # SuperGlobal reranking of the top SupG.M
_C.SupG.onemeval = False  # add the R1M distractor features of SupG.distractors_path
_C.SupG.gemp_p = 4.6  # GeM+ power
_C.SupG.rgem_p = 2.5  # Regional-GeM LP-pool power
_C.SupG.rgem_size = 5  # Regional-GeM window (odd)
_C.SupG.relup_alpha = 0.014  # ReLU+ clamp value
_C.SupG.relup_stage1_quirk = True  # clamp inside stage-1 bottlenecks even without relup (official code)
_C.SupG.M = 400  # reranking: number of top database images refined per query
_C.SupG.K = 9  # reranking: neighbours aggregated per descriptor (plus itself)
_C.SupG.beta = 0.15  # reranking: weight of the neighbours relative to the image itself
_C.SupG.distractors_path = ""  # R1M features (.pth or .npy); empty: ./feats_1m_RN<depth>.pth (extract_rop1m.py's)
_C.SupG.distractors_check = True  # refuse R1M features whose sidecar names other weights or flags

_C.CVNET = CfgNode()
_C.CVNET.RERANK = False  # rerank the first stage with CVNet-Rerank (docs/two_stage.md; needs SupG.rerank False)
_C.CVNET.TOPK = 100  # CVNet-Rerank: candidates per query and protocol (CVNet's TEST.TOPK_LIST)
_C.CVNET.MIX_RATIO = 0.5  # CVNet-Rerank: order by global similarity + MIX_RATIO x CVNet-Rerank score

_C.DEVICE = "auto"  # auto (CUDA when present, else CPU), cpu, cuda or cuda:N
_C.OUT_DIR = "."  # where log.txt (appended) and saved features go
_C.VERSION = 1  # config format version, recorded in config.yaml so a --cfg file of an older one still reads

# Config format versions: key renames and removals from version v to v + 1, as {old full key: new
# full key, or None when removed}. A --cfg file of version v is brought forward one step at a time
# (detectron2's config/compat.py and pycls's deprecated keys do the same), so a saved config.yaml
# keeps working after a rename. The command line always uses the current names.
RENAMED_KEYS: dict[int, dict[str, str | None]] = {}

_SCALES = {1: [1.0], 3: [0.7071, 1.0, 1.4142], 5: [0.5, 0.7071, 1.0, 1.4142, 2.0]}

_CHOICES = {
    "MODEL.TYPE": ["RESNET", "EFFICIENTNET_LITE0"],
    "MODEL.DEPTH": [50, 101],
    "TEST.SCALE_LIST": sorted(_SCALES),
    "TEST.PRECISION": ["fp32", "bf16", "fp16"],
    "TEST.DESCRIPTOR": ["superglobal", "cvnet"],
    "TEST.CVNET_UPSCALE": ["linear", "cubic"],
    "VERSION": [_C.VERSION],
    **{f"TEST.{key}": ["auto", "on", "off"]
       for key in ("FOLD_BN", "CHANNELS_LAST", "PIN_MEMORY", "NON_BLOCKING", "UINT8_TRANSFER")},
}

# torch keeps a device index in 8 bits (cuda:128 becomes cuda:-128) and refuses cuda:00
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:(0|[1-9]\d?|1[01]\d|12[0-7]))?")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def scales_of(scale_list):
    """The image scales that TEST.SCALE_LIST stands for."""
    return list(_SCALES[scale_list])


def get_cfg_defaults():
    """A fresh, unfrozen copy of every default."""
    return _C.clone()


def _flat_keys(node, prefix=""):
    keys = {}
    for name, value in node.items():
        full = prefix + name
        if isinstance(value, CfgNode):
            keys.update(_flat_keys(value, full + "."))
        else:
            keys[full] = value
    return keys


def _closest(key, known):
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not match:
        lowered = {k.lower(): k for k in known}
        match = [lowered[key.lower()]] if key.lower() in lowered else []
    return f"; did you mean {match[0]}?" if match else ""


def _expected(key, default):
    if key in _CHOICES:
        return "one of " + ", ".join(str(c) for c in _CHOICES[key])
    return {bool: "True or False", int: "an integer", float: "a number",
            str: "a string", list: "a list such as ['roxford5k', 'rparis6k']"}[type(default)]


VIS_EXPECTED = ("N (the first N queries), helped:N or hurt:N (the N queries reranking helped or hurt most by "
                "Medium AP; helped:N:E or :H for another protocol), names:<name>,<name> or a list of query names")


@dataclass(frozen=True)
class VisSelection:
    """TEST.VIS_QUERIES parsed: ``kind`` first | helped | hurt | names, with its count, protocol
    (E, M or H; helped / hurt only) or names."""

    kind: str
    count: int = 0
    protocol: str = "M"
    names: tuple = ()

    @property
    def wanted(self) -> bool:
        return self.count > 0 or bool(self.names)


def vis_selection(value) -> VisSelection:
    """The selection TEST.VIS_QUERIES holds: an int N >= 0, a string `helped:N`, `hurt:N` (N >= 1,
    optionally `:E`, `:M` or `:H`), `names:a,b`, or a list of query names. UserError otherwise."""
    bad = UserError(f"bad value {value!r} for TEST.VIS_QUERIES: expected {VIS_EXPECTED}")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        if value < 0:
            raise bad
        return VisSelection("first", count=value)
    if isinstance(value, (list, tuple)):
        names = tuple(name.strip() for name in value if isinstance(name, str) and name.strip())
        if not names or len(names) != len(value):
            raise bad
        return VisSelection("names", names=names)
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return VisSelection("first", count=int(text))
    if text.startswith("names:"):
        names = tuple(name.strip() for name in text[len("names:"):].split(",") if name.strip())
        if not names:
            raise bad
        return VisSelection("names", names=names)
    match = re.fullmatch(r"(helped|hurt):(\d+)(?::([EMH]))?", text)
    if not match or int(match[2]) < 1:
        raise bad
    return VisSelection(match[1], count=int(match[2]), protocol=match[3] or "M")


def _parse_vis_queries(text):
    """The command-line text of TEST.VIS_QUERIES as the value kept in the config: an int, a Python
    list of names, or the selection text."""
    text = text.strip()
    value = int(text) if re.fullmatch(r"\d+", text) else text
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
    try:
        vis_selection(value)
    except UserError:
        raise UserError(f"bad value {text!r} for TEST.VIS_QUERIES: expected {VIS_EXPECTED}") from None
    return list(value) if isinstance(value, (list, tuple)) else value


def _parse_value(key, text, default):
    """Turn the command-line text for `key` into a value of the default's type, or raise UserError."""
    if key == "TEST.VIS_QUERIES":
        return _parse_vis_queries(text)
    bad = UserError(f"bad value {text!r} for {key}: expected {_expected(key, default)}")
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise bad
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise bad from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise bad from None
    if isinstance(default, list):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = [item.strip() for item in text.split(",") if item.strip()]
        if isinstance(value, (str, tuple)):
            value = [value] if isinstance(value, str) else list(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise bad
        return value
    return text


def _looks_like_key(token, known):
    """A known key, or a would-be key in a known section (so a misspelt key is reported as one)."""
    sections = {key.split(".")[0] for key in known}
    return token in known or ("." in token and token.split(".")[0] in sections)


def _apply_pairs(config, args) -> dict:
    """Set the `KEY VALUE` pairs of `args` in `config` (unchecked); returns {key: value} as given."""
    known = _flat_keys(config)
    given = {}
    i = 0
    while i < len(args):
        key = args[i]
        if key not in known:
            raise UserError(f"unknown config key {key!r}{_closest(key, list(known))}"
                            " (python test.py --help lists every key)")
        default = known[key]
        # a boolean key alone means True, so a word shaped like a key (even a misspelt one) ends it;
        # any other key always takes the next word, unless that word is exactly a known key
        following = args[i + 1] if i + 1 < len(args) else None
        if isinstance(default, bool):
            has_value = following is not None and not _looks_like_key(following, known)
        else:
            has_value = following is not None and following not in known
        if not has_value and not isinstance(default, bool):
            hint = (f"; {following} is a config key: to use it as the value write it as ./{following}"
                    if following is not None and isinstance(default, str) else "")
            raise UserError(f"missing value for {key}: expected {_expected(key, default)}{hint}")
        value = _parse_value(key, args[i + 1], default) if has_value else True
        _set(config, key, value)
        given[key] = value
        i += 2 if has_value else 1
    return given


def _set(config, key, value):
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value


# GeM+ and Regional-GeM raise activations to the power p in float32, which overflows (inf, then NaN
# descriptors) once p * ln(x) > ln(FLT_MAX) = 88.7, i.e. for activations above exp(88.7 / p).
# Measured with real pretrained weights (EfficientNet-Lite0, the demo model, on scikit-image photos):
# its last map before the ReLU6 cap peaks at 15-22 and overflows from p = 30 on (capped at 6, from
# p = 49). p <= 16 keeps every activation below exp(88.7 / 16) = 256 finite: an order of magnitude
# above those maps, and 3.5x the paper's 4.6. Below p = 0.1 the float32 rounding of x^p (1e-7
# relative), raised to the power 1/p, starts to dominate the mean (and overflows near p = 1e-9).
POWER_RANGE = (0.1, 16.0)
_INT64 = 2 ** 63 - 1


def _not_finite(flat):
    """The first float key holding inf or NaN, or an integer key beyond int64 (what tensors hold)."""
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            return key, "a finite number"
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64:
            return key, "an integer that fits in 64 bits"
    return None


def _bad_value(flat, key, expected):
    """The UserError for an out-of-range value; `.key` and `.expected` let a caller word it with the
    file or the flag that set the value."""
    error = UserError(f"bad value {flat[key]!r} for {key}: expected {expected}")
    error.key, error.expected = key, expected
    return error


RGEM_SIZE_MAX = 99
# The head's weights are backbone width x REDUCTION_DIM float32 values (2048 x 65536 = 512 MiB), built
# before a checkpoint is compared with them; processes and threads beyond 1024 only exhaust a machine
# (torch keeps a thread count in a C int, and every worker is a forked process).
REDUCTION_DIM_MAX = 65536
PARALLEL_MAX = 1024
# Reranking weighs each of the K neighbours by beta * similarity (similarities of unit rows are at
# most 1) in float32 and sums K + 1 weights: beyond FLOAT32_MAX / (K + 1) the sum overflows and every
# score becomes NaN (the reranking checks its scores and stops; this refuses the value before work).
FLOAT32_MAX = 3.4028234663852886e38


def beta_max(K: int) -> float:
    """The largest SupG.beta whose float32 neighbour weights cannot overflow with K neighbours."""
    return FLOAT32_MAX / (K + 1)


def validate(config):
    """Check values that have a type but not a sensible range; raise UserError naming the key."""
    flat = _flat_keys(config)
    bad_number = _not_finite(flat)
    if bad_number:
        raise _bad_value(flat, *bad_number)
    low, high = POWER_RANGE
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise _bad_value(flat, key, _expected(key, flat[key]))
    checks = [
        ("SupG.M", flat["SupG.M"] >= 1, "an integer >= 1"),
        ("SupG.K", flat["SupG.K"] >= 0, "an integer >= 0"),
        ("SupG.K", flat["SupG.K"] < flat["SupG.M"], f"an integer below SupG.M ({flat['SupG.M']})"),
        ("SupG.beta", flat["SupG.beta"] >= 0, "a number >= 0"),
        ("SupG.beta", flat["SupG.beta"] <= beta_max(max(flat["SupG.K"], 0)),
         f"a number from 0 to {beta_max(max(flat['SupG.K'], 0)):.4g} (float32 neighbour weights beta x "
         f"similarity, summed over K + 1 = {max(flat['SupG.K'], 0) + 1}, overflow above)"),
        ("SupG.gemp_p", low <= flat["SupG.gemp_p"] <= high, f"a number from {low} to {high}"),
        ("SupG.rgem_p", low <= flat["SupG.rgem_p"] <= high, f"a number from {low} to {high}"),
        # the window pads the map by (size - 1) / 2 per side: far past any map's size it only costs memory
        ("SupG.rgem_size", 1 <= flat["SupG.rgem_size"] <= RGEM_SIZE_MAX and flat["SupG.rgem_size"] % 2 == 1,
         f"an odd integer from 1 to {RGEM_SIZE_MAX}"),
        ("SupG.relup_alpha", flat["SupG.relup_alpha"] >= 0, "a number >= 0"),
        ("MODEL.HEADS.REDUCTION_DIM", 1 <= flat["MODEL.HEADS.REDUCTION_DIM"] <= REDUCTION_DIM_MAX,
         f"an integer from 1 to {REDUCTION_DIM_MAX}"),
        ("TEST.BATCH_SIZE", flat["TEST.BATCH_SIZE"] >= 0, "an integer >= 1, or 0 for auto"),
        ("TEST.NUM_WORKERS", -1 <= flat["TEST.NUM_WORKERS"] <= PARALLEL_MAX,
         f"an integer from 0 to {PARALLEL_MAX}, or -1 for auto"),
        ("TEST.NUM_THREADS", 0 <= flat["TEST.NUM_THREADS"] <= PARALLEL_MAX,
         f"an integer from 1 to {PARALLEL_MAX}, or 0 for auto"),
        ("TEST.TOPK", flat["TEST.TOPK"] >= 1, "an integer >= 1"),
        ("TEST.VIS_TOPK", flat["TEST.VIS_TOPK"] >= 1, "an integer >= 1"),
        ("CVNET.TOPK", flat["CVNET.TOPK"] >= 1, "an integer >= 1"),
        ("CVNET.MIX_RATIO", flat["CVNET.MIX_RATIO"] >= 0, "a number >= 0"),
        ("DEVICE", DEVICE_PATTERN.fullmatch(flat["DEVICE"]) is not None,
         "auto, cpu, cuda or cuda:N (N from 0 to 127)"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise _bad_value(flat, key, expected)
    try:
        vis_selection(flat["TEST.VIS_QUERIES"])
    except UserError:
        raise _bad_value(flat, "TEST.VIS_QUERIES", VIS_EXPECTED) from None
    _refuse_contradictions(flat)
    for key, value in flat.items():
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(text, str) and not is_utf8(text) for text in texts):
            raise UserError(f"bad value {value!r} for {key}: it holds bytes that are not UTF-8 (a file or "
                            "folder name in another encoding); rename it")


def _refuse_contradictions(flat):
    """Settings that cannot hold together stop before any work."""
    if not flat["CVNET.RERANK"]:
        return
    if flat["SupG.rerank"]:
        raise UserError("CVNET.RERANK True and SupG.rerank True both rerank the first stage: choose one "
                        "(add SupG.rerank False for CVNet-Rerank)")
    if flat["SupG.onemeval"]:
        raise UserError("CVNET.RERANK with SupG.onemeval needs the pixels of the R1M images among the candidates, "
                        "which test.py does not read: set SupG.onemeval False (docs/two_stage.md)")


def describe_keys(keys=None):
    """Every key (or only those in `keys`) with its default and its comment, read from this file
    (one source of truth)."""
    pattern = re.compile(r"^_C\.([\w.]+) = (.+?)  # (.+)$")
    lines = []
    for line in Path(__file__).read_text().splitlines():
        match = pattern.match(line)
        if match and (keys is None or match.group(1) in keys):
            key, default, comment = match.groups()
            lines.append(f"  {key:<28} {default:<28} {comment}")
    return "\n".join(lines)


YAML_SUFFIXES = (".yaml", ".yml")


def _coerce_value(key, value, default):
    """A value read from a YAML file, turned into the default's type like a command-line value.
    YAML 1.1 reads unquoted on/off/yes/no as booleans: for a key whose choices are on and off that
    is what was meant; any other text key is told to quote the word."""
    if isinstance(value, str):
        return _parse_value(key, value, default)
    if key == "TEST.VIS_QUERIES" and isinstance(value, (int, list)):
        vis_selection(value)  # an int N or a YAML list of names, as on the command line
        return value
    if isinstance(value, bool) and isinstance(default, str):
        if "on" in _CHOICES.get(key, ()):
            return "on" if value else "off"
        raise UserError(f"bad value {value!r} for {key}: YAML reads an unquoted yes/no/on/off/true/false as "
                        f"{value}; write the text in quotes (e.g. {key.split('.')[-1]}: 'off')")
    kinds = {bool: (bool,), int: (int,), float: (int, float), list: (list,), str: ()}[type(default)]
    ok = isinstance(value, kinds) and (isinstance(default, bool) or not isinstance(value, bool))
    if isinstance(value, list):
        ok = ok and bool(value) and all(isinstance(v, str) for v in value)
    if not ok:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise UserError(f"bad value {shown} for {key}: expected {_expected(key, default)}")
    return float(value) if isinstance(default, float) else value


def _yaml_pairs(node, data, prefix=""):
    """(full key, value) for every leaf of the YAML mapping `data`, checked against the sections of
    `node`: an unknown key, a section given a value or a value given a section is refused."""
    known = list(_flat_keys(node, prefix)) + [prefix + k for k, v in node.items() if isinstance(v, CfgNode)]
    for name, value in data.items():
        full = f"{prefix}{name}"
        if not isinstance(name, str) or name not in node:
            raise UserError(f"unknown config key {full!r}{_closest(full, known)}")
        if isinstance(node[name], CfgNode):
            if not isinstance(value, dict):
                raise UserError(f"{full} is a section: expected its keys indented below it, found {value!r}")
            yield from _yaml_pairs(node[name], value, full + ".")
        else:
            yield full, _coerce_value(full, value, node[name])


class _AliasFound(Exception):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a config needs none, and a few lines of nested aliases
    expand to gigabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def _file_version(data, path):
    """The VERSION a --cfg mapping declares (a file without one predates versioning: version 1)."""
    version = data.get("VERSION", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"bad config file {path}: VERSION must be a whole number from 1 to {_C.VERSION}, "
                        f"found {version!r}")
    if version > _C.VERSION:
        raise UserError(f"config file {path} has VERSION {version}, newer than this code's {_C.VERSION}: "
                        "update the code, or write the file again with this version's test.py")
    return version


def upgrade_config(data, path="config"):
    """The --cfg mapping `data` with the keys renamed since its VERSION (RENAMED_KEYS), at the current
    VERSION. Nested mappings are copied, never changed in place."""
    version = _file_version(data, path)
    if version == _C.VERSION:
        return data
    flat = dict(_flatten_mapping(data))
    for step in range(version, _C.VERSION):
        for old, new in RENAMED_KEYS.get(step, {}).items():
            if old in flat:
                value = flat.pop(old)
                if new is not None:
                    if new in flat:
                        raise UserError(f"bad config file {path}: {old} (renamed {new} in version {step + 1}) "
                                        f"and {new} are both set: keep {new}")
                    flat[new] = value
    flat["VERSION"] = _C.VERSION
    nested = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return nested


def _flatten_mapping(data, prefix=""):
    """(dotted key, leaf value) pairs of a nested mapping (a non-str key is kept as its repr)."""
    for name, value in data.items():
        full = f"{prefix}{name}" if isinstance(name, str) else f"{prefix}{name!r}"
        if isinstance(value, dict) and value:
            yield from _flatten_mapping(value, full + ".")
        else:
            yield full, value


def _read_yaml_cfg(path, defaults):
    """A CfgNode of the keys set by the YAML file at `path`, each typed and checked like a command-line
    value. Only YAML is read, with yaml.safe_load: yacs' merge_from_file would execute a .py file."""
    if path.suffix.lower() not in YAML_SUFFIXES:
        raise UserError(f"config file {path}: only YAML files (.yaml or .yml) are accepted; "
                        f"{path.suffix or 'a file without extension'} is refused (a .py config would run code)")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_NoAliasLoader)
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"config file {path} is not UTF-8 text (byte {error.start})") from None
    except RecursionError:
        raise UserError(f"bad config file {path}: nested too deeply to be a config") from None
    except _AliasFound as line:
        raise UserError(f"bad config file {path}: line {line}: YAML aliases (*name) are not accepted in a "
                        "config; write the value out") from None
    except yaml.YAMLError as error:
        first = " ".join(str(error).split())[:200] or type(error).__name__
        raise UserError(f"bad config file {path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        found = "nothing (empty file)" if data is None else f"{type(data).__name__} {str(data)[:60]}"
        raise UserError(f"bad config file {path}: expected a mapping of sections (e.g. 'SupG:' with keys "
                        f"below it), found {found}")
    data = upgrade_config(data, path)
    try:
        override = CfgNode()
        for key, value in _yaml_pairs(defaults, data):
            node = override
            *parents, leaf = key.split(".")
            for name in parents:
                node = node.setdefault(name, CfgNode())
            node[leaf] = value
    except UserError as error:
        raise UserError(f"bad config file {path}: {error}") from None
    return override


def cfg_file_of(args):
    """The `--cfg FILE` of a command line, or None."""
    args = list(args)
    return args[args.index("--cfg") + 1] if "--cfg" in args and args.index("--cfg") + 1 < len(args) else None


def load_cfg_from_args(args, description="SuperGlobal", aliases=()):
    """Defaults overridden by the command line; `--cfg FILE.yaml` merges a YAML file first.

    `aliases`: an entry point's flags that stand for config keys, ``[(key, value or None, flag)]``;
    a flag sets its key, and one that contradicts a value given for the key as KEY VALUE or in
    --cfg stops the run. The result is checked once, with every source applied."""
    config = get_cfg_defaults()
    args = list(args)
    path, from_file = None, {}
    if "--cfg" in args:
        at = args.index("--cfg")
        if at + 1 >= len(args):
            raise UserError("missing file after --cfg")
        if "--cfg" in args[at + 1:]:
            raise UserError("--cfg given twice: merge the two files into one")
        path = Path(args[at + 1])
        readable_file(path, " (--cfg)")
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        override = _read_yaml_cfg(path, config)
        from_file = _flat_keys(override)
        for key, value in from_file.items():  # typed and checked already; TEST.VIS_QUERIES may be int or text
            _set(config, key, value)
        del args[at:at + 2]
    given = {**from_file, **_apply_pairs(config, args)}
    for key, value, flag in aliases:
        if value is None:
            continue
        if key in given and given[key] != value:
            raise UserError(f"{flag} {value} contradicts {given[key]!r}, given for it as {key.split('.')[-1]} in "
                            "--cfg or as a KEY VALUE pair: give it once")
        _set(config, key, value)
    try:
        validate(config)
    except UserError as error:  # a range check on a value that only the file set: name the file
        key = getattr(error, "key", None)
        if path is not None and key in from_file and key not in args:
            raise UserError(f"bad config file {path}: {error}") from None
        raise
    config.freeze()
    return config

"""From a config to the objects a run needs: the descriptor network with its weights, its width,
its fingerprint and the default R1M file name. The one place that reads MODEL.* and SupG.* pooling
keys; model/ itself never sees a config."""

from config import scales_of
from errors import UserError
from model.cvnet_global import build_cvnet_global
from model.fingerprint import weights_sha256
from model.registry import BackboneOptions, get_backbone
from model.superglobal import SuperGlobalDescriptor

FEATURE_KEYS = ("gemp", "rgem", "sgem", "relup", "gemp_p", "rgem_p", "rgem_size", "relup_alpha",
                "relup_stage1_quirk")


def backbone_of(cfg):
    return get_backbone(cfg.MODEL.TYPE)


def backbone_options(cfg) -> BackboneOptions:
    """The registry's builder arguments, from MODEL.* and the SupG ReLU+ keys."""
    supg = cfg.SupG
    return BackboneOptions(depth=cfg.MODEL.DEPTH, reduction_dim=cfg.MODEL.HEADS.REDUCTION_DIM, relup=supg.relup,
                           relup_alpha=supg.relup_alpha, relup_stage1_quirk=supg.relup_stage1_quirk)


def backbone_tag(cfg):
    """Short name of the backbone cfg describes, for file names: RN50, RN101 or LITE0."""
    return backbone_of(cfg).tag(backbone_options(cfg))


def default_r1m_path(cfg):
    """Where extract_rop1m.py writes, and test.py reads, R1M features when no path is given:
    ./feats_1m_RN{depth}.pth. extract_rop1m.py extracts for the CVNet ResNet only, so another
    backbone has no default file (UserError: name one with SupG.distractors_path)."""
    if cfg.MODEL.TYPE != "RESNET":
        raise UserError(f"SupG.onemeval with MODEL.TYPE {cfg.MODEL.TYPE}: extract_rop1m.py extracts R1M features "
                        f"for the CVNet ResNet only, so there is no default file; name features of this backbone "
                        f"(N x {descriptor_dim(cfg)}) with SupG.distractors_path")
    return f"./feats_1m_{backbone_tag(cfg)}.pth"


def descriptor_dim(cfg):
    """Length of the global descriptor cfg describes."""
    return backbone_of(cfg).dim(backbone_options(cfg))


def build_backbone(cfg):
    """The backbone of cfg.MODEL.TYPE with cfg's ReLU+ settings, untrained."""
    return backbone_of(cfg).build(backbone_options(cfg))


def build_descriptor(cfg):
    """The SuperGlobal descriptor network that `cfg` describes, in eval mode, untrained."""
    supg = cfg.SupG
    descriptor = SuperGlobalDescriptor(build_backbone(cfg), scales_of(cfg.TEST.SCALE_LIST), supg.gemp,
                                       supg.rgem, supg.sgem, supg.gemp_p, supg.rgem_p, supg.rgem_size,
                                       input_norm=backbone_of(cfg).input_norm,
                                       precision_plan=backbone_of(cfg).precision_plan)
    return descriptor.eval()


def load_backbone_weights(cfg, backbone):
    """Load TEST.WEIGHTS into `backbone` the way its registry entry says; returns the file loaded."""
    return backbone_of(cfg).load_weights(backbone, cfg.TEST.WEIGHTS, backbone_options(cfg))


def load_descriptor(cfg):
    """(descriptor network with its weights, weights file): SuperGlobal's, or with TEST.DESCRIPTOR
    cvnet CVNet's own plain ResNet with its global head."""
    if cfg.TEST.DESCRIPTOR == "cvnet":
        network = build_cvnet_global(cfg.MODEL.DEPTH, cfg.MODEL.HEADS.REDUCTION_DIM)
        return network, load_backbone_weights(cfg, network)
    descriptor = build_descriptor(cfg)
    return descriptor, load_backbone_weights(cfg, descriptor.backbone)


def descriptor_fingerprint(cfg, weights_path):
    """Everything in `cfg` and the weights that changes a descriptor's value."""
    return {
        "model_type": cfg.MODEL.TYPE,
        "depth": cfg.MODEL.DEPTH,
        "reduction_dim": cfg.MODEL.HEADS.REDUCTION_DIM,
        "scales": scales_of(cfg.TEST.SCALE_LIST),
        "precision": cfg.TEST.PRECISION,
        "descriptor": cfg.TEST.DESCRIPTOR,
        "cvnet_upscale": cfg.TEST.CVNET_UPSCALE if cfg.TEST.DESCRIPTOR == "cvnet" else None,
        **{key: cfg.SupG[key] for key in FEATURE_KEYS},
        "weights_sha256": weights_sha256(weights_path),
    }

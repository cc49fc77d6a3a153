"""test/data/gldv2.py on a tiny generated GLDv2-layout set, with hand-computed mAP@100."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from errors import UserError
from model.superglobal import SuperGlobalDescriptor
from test.data.gldv2 import (
    GLDv2Images,
    average_precision_at_k,
    evaluate_gldv2,
    format_gldv2,
    load_gldv2,
    upscale_small,
    write_submission,
)
from test.data.synthetic import GLDV2_INDEX as INDEX
from test.data.synthetic import GLDV2_TEST as TEST
from test.data.synthetic import random_resnet, write_gldv2
from test.extraction.extract import extract_features

ROOT = Path(__file__).resolve().parents[2]


def test_layout_and_lists(tmp_path):
    write_gldv2(tmp_path, with_lists=False)
    g = load_gldv2(tmp_path)
    assert g.index_ids == sorted(INDEX) and g.query_ids == [TEST[0], TEST[1], TEST[3]]
    assert g.usage == ["Public", "Private", "Public"]
    assert g.query_paths[0] == str(tmp_path / "test/b/0/1" / f"{TEST[0]}.jpg")
    assert [list(map(g.index_ids.__getitem__, r)) for r in g.relevant][1] == [INDEX[0]]
    write_gldv2(tmp_path / "listed")
    listed = load_gldv2(tmp_path / "listed")
    assert listed.index_ids == INDEX[::-1] and listed.query_ids == [TEST[3], TEST[1], TEST[0]]


def test_hand_computed_map_at_100(tmp_path):
    write_gldv2(tmp_path, with_lists=False)
    g = load_gldv2(tmp_path)
    pos = {image_id: i for i, image_id in enumerate(g.index_ids)}
    predicted = {  # index ids, best first
        TEST[0]: [INDEX[1], INDEX[0], INDEX[3]],                        # (1/1 + 2/3) / 2
        TEST[1]: [INDEX[2], INDEX[0]],                                   # (1/2) / 1
        TEST[3]: [INDEX[2], INDEX[2], INDEX[4], INDEX[0], INDEX[5]],     # duplicate skipped: (1 + 2/3 + 3/5) / 3
    }
    ranks = np.full((5, 3), pos[INDEX[3]])
    for j, test_id in enumerate(g.query_ids):
        ranks[:len(predicted[test_id]), j] = [pos[i] for i in predicted[test_id]]
    ranks[2:, 1] = pos[INDEX[1]]
    ranks[3:, 0] = pos[INDEX[1]]
    results = evaluate_gldv2(ranks, g)
    a0, a1, a3 = (1 + 2 / 3) / 2, 0.5, (1 + 2 / 3 + 3 / 5) / 3
    assert results["aps"] == pytest.approx([a0, a1, a3])
    assert results["Public"] == pytest.approx((a0 + a3) / 2) and results["Private"] == pytest.approx(a1)
    assert results["All"] == pytest.approx((a0 + a1 + a3) / 3)
    assert format_gldv2(results) == "GLDv2 retrieval mAP@100: Public 79.44, Private 50.00, All 69.63"
    write_submission(tmp_path / "sub.csv", g, ranks, k=2)
    assert (tmp_path / "sub.csv").read_text().splitlines()[1] == f"{TEST[0]},{INDEX[1]} {INDEX[0]}"


def test_ap_truncates_at_k():
    assert average_precision_at_k([0, 1, 2, 9], set(range(5)), k=3) == 1.0   # min(|R|, k) = 3
    assert average_precision_at_k([9] * 100 + [0], {0}) == 0.0              # rank 101 does not count


def test_small_images_are_upscaled_and_extract(tmp_path):
    im = np.random.default_rng(0).integers(0, 255, (5, 10, 3), dtype=np.uint8)
    assert upscale_small(im).shape == (96, 192, 3)
    assert upscale_small(im.transpose(1, 0, 2)).shape == (192, 96, 3)
    big = np.zeros((100, 300, 3), np.uint8)
    assert upscale_small(big) is big
    cv2.imwrite(str(tmp_path / "tiny.jpg"), im[:3, :2])
    descriptor = SuperGlobalDescriptor(random_resnet(50, seed=1, reduction_dim=16), [0.7071, 1.0, 1.4142]).eval()
    features = extract_features(descriptor, GLDv2Images([tmp_path / "tiny.jpg"]), "cpu", num_workers=0)
    assert features.shape == (1, 16) and np.isfinite(features).all()


def test_bad_solution_is_user_error(tmp_path):
    write_gldv2(tmp_path, with_lists=False)
    (tmp_path / "retrieval_solution_v2.1.csv").write_text(f"id,images,Usage\n{TEST[0]},ffff00,Public\n")
    with pytest.raises(UserError, match="not in the index"):
        load_gldv2(tmp_path)


def test_rerank_features_gldv2(tmp_path):
    write_gldv2(tmp_path, with_lists=False)
    g = load_gldv2(tmp_path)
    rng = np.random.default_rng(2)
    for name, rows in (("Q", 3), ("X", 6)):  # unit rows: rerank_features.py refuses others
        v = rng.random((rows, 8), dtype=np.float32)
        np.save(tmp_path / f"{name}.npy", v / np.linalg.norm(v, axis=1, keepdims=True))
    done = subprocess.run([sys.executable, str(ROOT / "rerank_features.py"), "--query", "Q.npy", "--db", "X.npy",
                           "--methods", "none", "--gldv2", "."], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    Q, X = np.load(tmp_path / "Q.npy"), np.load(tmp_path / "X.npy")
    ranks = torch.sort(torch.from_numpy(X @ Q.T), dim=0, descending=True, stable=True).indices.numpy()
    assert format_gldv2(evaluate_gldv2(ranks, g)) in done.stdout

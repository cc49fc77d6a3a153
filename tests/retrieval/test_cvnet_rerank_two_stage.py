"""CVNet-Rerank's candidate selection, mixing and cached/batched scoring against plain loops.

Facts (sungonce/CVNet test/test_model.py, test/test_utils.py rerank_ranks_revisitop): per query,
walk the global ranking; junk is skipped; easy counts for E and M, hard for M and H, anything else
for all three; each protocol takes its first topk; each chosen pair is scored once; per protocol the
chosen images are sorted by descending `sim[image, query] + score * ratio` and written back into
the rank positions they held. The loop below is written from those facts, one query at a time.
"""

import cv2
import numpy as np
import pytest
import torch

from model.cvnet_rerank import build_cvnet_rerank
from test.data.synthetic import random_resnet, textured_image
from test.extraction.cvnet_global_loop import CVNetImages
from test.two_stage.cvnet_rerank import PairScorer, candidate_labels, mix_rankings, scored_pairs, select_candidates


def loop_rerank(ranks, gnd, sim, score_of, topk, ratio):
    """One query at a time, one image at a time: (pairs in visiting order, {'E','M','H': ranks})."""
    out = {p: ranks.copy() for p in "EMH"}
    pairs = []
    for q in range(ranks.shape[1]):
        chosen = {p: [] for p in "EMH"}
        for j in range(ranks.shape[0]):
            image = int(ranks[j, q])
            if image in gnd[q]["junk"]:
                continue
            wants = {"E": True, "M": True, "H": True}
            if image in gnd[q]["easy"]:
                wants["H"] = False
            elif image in gnd[q]["hard"]:
                wants["E"] = False
            taken = False
            for p in "EMH":
                if wants[p] and len(chosen[p]) < topk:
                    chosen[p].append(j)
                    taken = True
            if taken:
                pairs.append((image, q))
        for p in "EMH":
            images = ranks[chosen[p], q]
            mixed = np.array([sim[i, q] + score_of[(int(i), q)] * np.float32(ratio) for i in images], np.float32)
            out[p][chosen[p], q] = images[np.argsort(-mixed, kind="stable")]
    return pairs, out


def random_case(seed, n=40, nq=5):
    rng = np.random.default_rng(seed)
    sim = rng.random((n, nq)).astype(np.float32)
    ranks = np.argsort(-sim, axis=0, kind="stable")
    gnd = []
    for _ in range(nq):
        ids = rng.permutation(n)
        gnd.append({"easy": ids[:6], "hard": ids[6:11], "junk": ids[11:15]})
    return ranks, gnd, sim


@pytest.mark.parametrize("seed,topk", [(0, 4), (1, 10), (2, 100)])
def test_selection_and_mixing_equal_the_per_query_loop(seed, topk):
    ranks, gnd, sim = random_case(seed)
    selected = select_candidates(candidate_labels(ranks, gnd), topk)
    pairs, positions = scored_pairs(ranks, selected)
    rng = np.random.default_rng(seed + 10)
    scores = rng.random(len(pairs)).astype(np.float32)
    score_of = {(int(i), int(q)): s for (i, q), s in zip(pairs, scores)}
    expected_pairs, expected = loop_rerank(ranks, gnd, sim, score_of, topk, 0.5)
    assert [tuple(p) for p in pairs.tolist()] == expected_pairs
    assert pairs.dtype == np.int64 and np.array_equal(ranks[positions[:, 0], positions[:, 1]], pairs[:, 0])
    ours = mix_rankings(ranks, selected, positions, scores, sim, 0.5)
    for p in "EMH":
        np.testing.assert_array_equal(ours[p], expected[p])
        assert (np.sort(ours[p], axis=0) == np.arange(ranks.shape[0])[:, None]).all()
    if topk == 4:
        assert not np.array_equal(ours["E"], ranks)               # something moved


def test_junk_wins_over_easy_and_easy_over_hard():
    ranks = np.arange(4)[:, None]
    labels = candidate_labels(ranks, [{"easy": [0, 1], "hard": [1, 2], "junk": [0]}])
    assert labels[:, 0].tolist() == [3, 1, 2, 0]                  # junk, easy, hard, negative


def write_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(str(folder / f"{i}.jpg"))
        cv2.imwrite(paths[-1], textured_image(w, h, rng, i % 3))
    return paths


@pytest.fixture(scope="module")
def reranker():
    torch.manual_seed(0)
    model = build_cvnet_rerank(50)
    model.backbone.load_state_dict(random_resnet(50, seed=3).state_dict())
    return model


@pytest.mark.parametrize("cache_bytes,batch_bytes", [(1 << 30, 1 << 30), (50_000, 1)])
def test_cached_batched_scores_equal_the_plain_per_pair_path(tmp_path, reranker, cache_bytes, batch_bytes):
    """Repeating candidates, two map sizes, and budgets that cache everything in batches, or two
    images (evictions) one pair at a time: same scores as CVNet's one-pair forward."""
    db = write_images(tmp_path, [(64, 48), (48, 64), (64, 48), (64, 48), (48, 64)])
    queries = write_images(tmp_path / "..", [(70, 60), (60, 50)], seed=1)[:2]
    boxes = [(3.2, 4.7, 60.1, 55.0), (0.0, 2.0, 55.5, 49.0)]
    pairs = np.array([[0, 0], [1, 0], [2, 0], [4, 0], [2, 1], [0, 1], [3, 1], [1, 1]], dtype=np.int64)
    scorer = PairScorer(reranker, "cpu", cache_bytes=cache_bytes, batch_bytes=batch_bytes)
    scores = scorer.score(pairs, queries, boxes, db)
    q_images = CVNetImages(queries, boxes, scales=[1.0])
    d_images = CVNetImages(db, None, scales=[1.0])
    with torch.no_grad():
        plain = [float(reranker(q_images[int(q)][1][0][None], d_images[int(i)][1][0][None])) for i, q in pairs]
    np.testing.assert_allclose(scores, plain, rtol=0, atol=1e-6)
    assert scores.dtype == np.float32 and len(set(np.round(scores, 6))) > 1
    if cache_bytes >= 1 << 30:
        assert (scorer.cache.misses, scorer.cache.hits) == (5, 3)

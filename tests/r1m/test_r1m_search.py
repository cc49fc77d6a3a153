"""Bounded-memory search over database + distractors vs the official full concatenate-and-argsort.

Most cases use "quantised" descriptors (entries k/8, |k| <= 4, few dimensions): every dot product
is exact in float32 whatever the summation order, so the full (N + N1) x nq matmul and the chunked
one agree bit for bit, planted ties are real ties and the comparison with the full stable argsort
is exact. One case uses ordinary float data (L2-normalised) as well.
"""

import numpy as np
import pytest
import torch

from errors import UserError
from modules.reranking import rerank
from test.data.gnd import protocols
from test.r1m.search import evaluate_from_search, rerank_top, search_with_r1m, top_ranks, wanted_from_protocols
from test.retrieval.evaluate import evaluate_revisitop


def quantised(rng, *shape):
    return torch.from_numpy(rng.integers(-4, 5, size=shape).astype(np.float32) / 8)


def make_case(seed, n_db=120, n_dis=700, dim=12, nq=9):
    """Database, distractors, queries and ground truth with planted positives and ties."""
    rng = np.random.default_rng(seed)
    X, D, Q = quantised(rng, n_db, dim), quantised(rng, n_dis, dim), quantised(rng, nq, dim)
    gnd = []
    for j in range(nq):
        ids = rng.permutation(n_db)
        easy, hard, junk = ids[:rng.integers(1, 6)], ids[6:6 + rng.integers(0, 8)], ids[20:20 + rng.integers(0, 10)]
        # positives near the query (clipped to the quantised grid)
        near = Q[j].numpy()[None] + rng.integers(-1, 2, size=(len(easy), dim)) / 8
        X[easy] = torch.from_numpy(np.clip(near, -0.5, 0.5).astype(np.float32))
        gnd.append({"easy": easy, "hard": hard, "junk": junk})
    gnd[1] = {"easy": np.array([], dtype=np.int64), "hard": np.array([], dtype=np.int64), "junk": gnd[1]["junk"]}
    gnd[2]["hard"] = np.array([], dtype=np.int64)                    # H has no positives here
    gnd[3]["junk"] = np.concatenate([gnd[3]["junk"], gnd[3]["easy"][:1]])  # id in ok and junk
    # ties: distractors equal to positives (several, in different blocks), zero rows (failed
    # R1M images), duplicated database rows, a distractor duplicated many times
    for j in range(nq):
        pos = np.concatenate([gnd[j]["easy"], gnd[j]["hard"]])
        if pos.size:
            D[rng.integers(0, n_dis, size=3)] = X[pos[0]]
    D[rng.integers(0, n_dis, size=25)] = 0
    X[rng.integers(0, n_db, size=10)] = X[rng.integers(0, n_db, size=10)]
    D[-40:] = D[5]
    return Q, X, D, gnd


def full_ranks(Q, X, D):
    sims = torch.cat([X, D.to(torch.float32)]) @ Q.T
    return torch.sort(sims, dim=0, descending=True, stable=True)


def assert_same_results(ours, ref):
    for name in "EMH":
        a, b = ours[name], ref[name]
        assert a["map"] == b["map"] or (np.isnan(a["map"]) and np.isnan(b["map"])), name
        np.testing.assert_array_equal(a["aps"], b["aps"])
        np.testing.assert_array_equal(a["mpr"], b["mpr"])
        np.testing.assert_array_equal(a["prs"], b["prs"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("chunk_rows", [1, 64, 97, None])
def test_matches_full_argsort(seed, chunk_rows):
    Q, X, D, gnd = make_case(seed)
    protos = protocols(gnd)
    scores, ranks = full_ranks(Q, X, D)
    keep = 50
    res = search_with_r1m(Q, X, D, keep, wanted_from_protocols(protos), chunk_rows=chunk_rows)
    assert torch.equal(res.top, ranks[:keep])
    assert torch.equal(res.top_scores, scores[:keep])
    # exact positions of every wanted id
    inverse = torch.empty_like(ranks).scatter_(0, ranks, torch.arange(len(ranks)).unsqueeze(1).expand_as(ranks))
    for j, w in enumerate(res.wanted):
        np.testing.assert_array_equal(res.positions[j], inverse[w, j].numpy())
    assert_same_results(evaluate_from_search(res, protos), evaluate_revisitop(ranks.numpy(), protos))
    np.testing.assert_array_equal(top_ranks(res), ranks[:keep].numpy())


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("M,keep", [(30, 30), (30, 45), (400, 10000)])
def test_rerank_matches_full_pipeline(seed, M, keep):
    """The official pipeline (full ranks, rerank the top M over the concatenated matrix, evaluate)
    against rerank_top on the search's top block + evaluate_from_search."""
    Q, X, D, gnd = make_case(seed, n_db=60, n_dis=300)
    protos = protocols(gnd)
    _, ranks = full_ranks(Q, X, D)
    reranked_full = rerank(Q, torch.cat([X, D]), ranks, M=M, K=9, beta=0.15)
    res = search_with_r1m(Q, X, D, keep, wanted_from_protocols(protos), chunk_rows=50)
    block = rerank_top(Q, X, D, res, M=M, K=9, beta=0.15, query_chunk=4)
    m = min(M, len(ranks))
    assert block.shape == (m, len(Q))
    assert torch.equal(block, reranked_full[:m])
    ours = evaluate_from_search(res, protos, reranked_top=block)
    assert_same_results(ours, evaluate_revisitop(reranked_full.numpy(), protos))
    saved = top_ranks(res, block)
    np.testing.assert_array_equal(saved[:m], block.numpy())
    np.testing.assert_array_equal(saved[m:], res.top[m:].numpy())


def test_float_data_and_identical_rows_tie_exactly():
    """Ordinary float descriptors: identical rows score bit-identically wherever they are (database,
    first or last, partial block), and the result matches the full argsort."""
    rng = np.random.default_rng(7)
    n_db, n_dis, dim, nq = 200, 1409, 256, 6          # the last block (of 128) holds one row
    X = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n_db, dim), dtype=np.float32)), dim=1)
    D = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((n_dis, dim), dtype=np.float32)), dim=1)
    noise = torch.randn(nq, dim, generator=torch.Generator().manual_seed(0))
    Q = torch.nn.functional.normalize(X[:nq] + 0.02 * noise, dim=1)
    D[[0, 777, n_dis - 1]] = X[:3]                      # copies of the queries' best positives
    gnd = [{"easy": np.array([j, 10 + j]), "hard": np.array([50 + j]), "junk": np.array([90])} for j in range(nq)]
    protos = protocols(gnd)
    res = search_with_r1m(Q, X, D, 40, wanted_from_protocols(protos), chunk_rows=128)
    for copy, original in ((n_db, 0), (n_db + 777, 1), (n_db + n_dis - 1, 2)):
        j = original                                    # query j's nearest is database item j
        col = res.top[:, j].tolist()
        assert col.index(original) + 1 == col.index(copy)
        assert res.top_scores[col.index(original), j] == res.top_scores[col.index(copy), j]
    scores, ranks = full_ranks(Q, X, D)
    assert torch.equal(res.top, ranks[:40])
    assert_same_results(evaluate_from_search(res, protos), evaluate_revisitop(ranks.numpy(), protos))


def test_numpy_and_half_distractors_give_the_same_result():
    Q, X, D, gnd = make_case(11)
    protos = protocols(gnd)
    wanted = wanted_from_protocols(protos)
    ref = search_with_r1m(Q, X, D, 30, wanted, chunk_rows=64)
    for matrix in (D.numpy(), D.numpy().astype(np.float16), D.to(torch.float16), D.to(torch.bfloat16)):
        res = search_with_r1m(Q, X, matrix, 30, wanted, chunk_rows=64)
        assert torch.equal(res.top, ref.top)
        for a, b in zip(res.positions, ref.positions):
            np.testing.assert_array_equal(a, b)


def test_rerank_needs_the_top_m():
    Q, X, D, _ = make_case(6)
    res = search_with_r1m(Q, X, D, 20, [[0]] * len(Q))
    with pytest.raises(ValueError, match="keep >= M"):
        rerank_top(Q, X, D, res, M=30)


def test_keep_larger_than_everything_and_no_wanted():
    Q, X, D, _ = make_case(3, n_db=20, n_dis=30)
    _, ranks = full_ranks(Q, X, D)
    res = search_with_r1m(Q, X, D, 1000, [[] for _ in range(len(Q))], chunk_rows=8)
    assert torch.equal(res.top, ranks)
    assert all(p.size == 0 for p in res.positions)


def test_nonfinite_distractor_rows_are_refused_with_the_count():
    Q, X, D, _ = make_case(4)
    D[[3, 100, 650]] = float("nan")
    D[200, 1] = float("inf")
    with pytest.raises(UserError, match="4 of 700 rows"):
        search_with_r1m(Q, X, D, 10, [[0]] * len(Q), chunk_rows=64)


def test_bad_arguments():
    Q, X, D, _ = make_case(5)
    with pytest.raises(ValueError, match="database ids"):
        search_with_r1m(Q, X, D, 10, [[len(X)]] * len(Q))
    with pytest.raises(ValueError, match="one id array per query"):
        search_with_r1m(Q, X, D, 10, [[0]])
    with pytest.raises(UserError, match="dimension"):
        search_with_r1m(Q, X, D[:, :5], 10, [[0]] * len(Q))
    with pytest.raises(ValueError, match="keep"):
        search_with_r1m(Q, X, D, 0, [[0]] * len(Q))
    res = search_with_r1m(Q, X, D, 10, [[0]] * len(Q))
    with pytest.raises(ValueError, match="permutation"):
        evaluate_from_search(res, protocols([{"easy": [0], "hard": [], "junk": []}] * len(Q)),
                             reranked_top=torch.zeros(5, len(Q), dtype=torch.long))
    with pytest.raises(ValueError, match="not among the wanted"):
        evaluate_from_search(res, protocols([{"easy": [1], "hard": [], "junk": []}] * len(Q)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_full_argsort():
    Q, X, D, gnd = make_case(2, n_db=300, n_dis=5000, dim=16)
    protos = protocols(gnd)
    scores, ranks = full_ranks(Q, X, D)               # exact data: CPU and CUDA scores agree
    dev = torch.device("cuda")
    for matrix in (D.numpy(), D.to(dev)):
        res = search_with_r1m(Q.to(dev), X.to(dev), matrix, 64, wanted_from_protocols(protos),
                                      chunk_rows=512)
        assert torch.equal(res.top, ranks[:64])
        assert_same_results(evaluate_from_search(res, protos), evaluate_revisitop(ranks.numpy(), protos))
        block = rerank_top(Q.to(dev), X.to(dev), matrix, res, M=50)
        assert torch.equal(block, rerank(Q, torch.cat([X, D]), ranks, M=50)[:50])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_host_staging_path_on_cpu_gives_the_direct_scores(dtype):
    """The numpy -> device staging buffer (the CUDA path) switched on on a CPU: every block's scores,
    the zeroed tail of a short last block included, equal the direct copy's bit for bit."""
    from test.r1m.search import _Blocks

    rng = np.random.default_rng(3)
    Q = torch.from_numpy(rng.standard_normal((5, 32)).astype(np.float32))
    rows = rng.standard_normal((23, 32)).astype(dtype)
    direct, staged = _Blocks(Q, 8), _Blocks(Q, 8, staging=True)
    assert not direct.staging and staged.staging
    for start in range(0, 23, 8):
        count = min(8, 23 - start)
        expected = rows[start:start + count].astype(np.float32) @ Q.numpy().T
        got_direct = direct.scores(rows, start, count).clone()
        got_staged = staged.scores(rows, start, count).clone()
        assert torch.equal(got_direct, got_staged)
        np.testing.assert_allclose(got_staged.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert staged.stage is not None and not staged.stage.is_pinned()

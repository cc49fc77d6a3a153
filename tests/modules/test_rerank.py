"""modules.reranking against the plain per-query loop of bench/rerank_baseline.py."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.rerank_baseline import rerank_loop, rerank_official
from modules.reranking import MDescAug, RerankwMDA, ranks_from_topk, rerank, rerank_topk
from modules.reranking.rerank import top_entries


def make_data(nq=6, N=300, D=32, seed=0, dtype=torch.float64):
    """Queries are noisy copies of database items, so top lists have structure to rerank."""
    g = torch.Generator().manual_seed(seed)
    X = F.normalize(torch.randn(N, D, generator=g, dtype=dtype), dim=1)
    picked = torch.randint(N, (nq,), generator=g)
    Q = F.normalize(X[picked] + 0.8 * torch.randn(nq, D, generator=g, dtype=dtype) / D ** 0.5, dim=1)
    ranks = torch.argsort(X @ Q.T, dim=0, descending=True)
    return Q, X, ranks


CASES = {  # name: (data, rows of ranks kept, rerank kwargs)
    'N>M': (dict(), None, dict(M=50)),
    'N<M': (dict(N=40), None, dict(M=100)),
    "N'<N": (dict(), 120, dict(M=50)),
    "N'=M<N": (dict(), 30, dict(M=30)),
    'K=0': (dict(), None, dict(M=50, K=0)),
    'M=1': (dict(), None, dict(M=1)),
    'M<K+1': (dict(), None, dict(M=6, K=9)),
    'nq=1': (dict(nq=1), None, dict(M=60)),
    'beta=0.5,K=3': (dict(seed=3), None, dict(M=80, K=3, beta=0.5)),
    'chunk=1': (dict(), None, dict(M=50, chunk_size=1)),
    'chunk=4': (dict(nq=9), None, dict(M=50, chunk_size=4)),
}


def case(name):
    data, rows, kwargs = CASES[name]
    Q, X, ranks = make_data(**data)
    return Q, X, ranks if rows is None else ranks[:rows], kwargs


@pytest.mark.parametrize('name', CASES)
def test_rerank_equals_loop(name):
    Q, X, ranks, kwargs = case(name)
    out = rerank(Q, X, ranks, **kwargs)
    kwargs.pop('chunk_size', None)
    assert out.dtype == torch.int64 and out.shape == ranks.shape
    assert torch.equal(out, rerank_loop(Q, X, ranks, **kwargs))


def test_rerank_changes_the_top_keeps_the_rest_and_permutes():
    Q, X, ranks, _ = case('N>M')
    out = rerank(Q, X, ranks, M=50)
    assert not torch.equal(out[:50], ranks[:50])
    assert torch.equal(out[50:], ranks[50:])
    assert torch.equal(out[:50].sort(0).values, ranks[:50].sort(0).values)


def test_chunk_sizes_agree():
    Q, X, ranks = make_data(nq=7)
    auto = rerank(Q, X, ranks, M=50)
    for chunk in (1, 2, 3, 7, 100):
        assert torch.equal(rerank(Q, X, ranks, M=50, chunk_size=chunk), auto)


def test_float32_and_float16_inputs():
    Q, X, ranks = make_data(dtype=torch.float32)
    assert torch.equal(rerank(Q, X, ranks, M=50), rerank_loop(Q, X, ranks, M=50))
    half = rerank(Q.half(), X.half(), ranks.int(), M=50)
    assert half.dtype == torch.int64
    assert torch.equal(half, rerank(Q.half().float(), X.half().float(), ranks, M=50))


def test_ties_are_broken_like_a_stable_sort():
    # Small integer vectors with duplicates: every product is exact, so ties are real ties;
    # beta=0 keeps the augmented descriptors exact too.
    g = torch.Generator().manual_seed(1)
    X = torch.randint(-2, 3, (40, 6), generator=g).double()
    X = torch.cat([X, X[:15]])
    Q = torch.randint(-2, 3, (5, 6), generator=g).double()
    ranks = torch.argsort(X @ Q.T, dim=0, descending=True, stable=True)
    for beta in (0.0, 0.5):
        expected = rerank_loop(Q, X, ranks, M=30, K=3, beta=beta)
        assert torch.equal(rerank(Q, X, ranks, M=30, K=3, beta=beta), expected)
        assert torch.equal(rerank_official(Q, X, ranks, M=30, K=3, beta=beta), expected)


def test_top_entries_matches_stable_sort_with_ties():
    scores = torch.tensor([[[3., 1., 3., 2., 3., 0.]], [[5., 4., 3., 2., 1., 0.]]])
    values, indices = top_entries(scores, 2)
    assert indices.tolist() == [[[0, 2]], [[0, 1]]]
    assert values.tolist() == [[[3., 3.]], [[5., 4.]]]


def test_wrappers_reproduce_rerank_and_official_outputs():
    Q, X, ranks = make_data()
    M, K, beta = 50, 9, 0.15
    rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba = MDescAug(M, K, beta)(X, Q, ranks)
    assert len(rerank_dba_final) == Q.shape[0] and rerank_dba_final[0].shape == (M,)
    assert res_top1000_dba.shape == ranks_trans_1000_pre.shape == (Q.shape[0], M)
    assert x_dba.shape == (Q.shape[0], M, X.shape[1])

    # x_dba: weighted mean of the K+1 nearest top items, first weight 1
    top = ranks[:M, 0]
    sims, nearest = (X[top] @ X[top][3]).sort(descending=True)
    weights = torch.cat([torch.ones(1, dtype=X.dtype), beta * sims[1:K + 1]])
    torch.testing.assert_close(x_dba[0, 3], weights @ X[top][nearest[:K + 1]] / weights.sum())
    torch.testing.assert_close(res_top1000_dba, torch.einsum('ac,adc->ad', Q, x_dba))
    assert torch.equal(ranks_trans_1000_pre, res_top1000_dba.argsort(1, descending=True))
    assert torch.equal(rerank_dba_final[0], top[ranks_trans_1000_pre[0]])

    out = RerankwMDA(M, K, beta)(ranks, rerank_dba_final, res_top1000_dba, ranks_trans_1000_pre, x_dba)
    assert torch.equal(out, rerank(Q, X, ranks, M=M, K=K, beta=beta))
    stacked = RerankwMDA(M, K, beta)(ranks, torch.stack(rerank_dba_final), res_top1000_dba,
                                     ranks_trans_1000_pre, x_dba)
    assert torch.equal(stacked, out)


@pytest.mark.parametrize('name', ['N>M', "N'=M<N", 'K=0', 'M=1'])
def test_official_transcription_equals_loop(name):
    Q, X, ranks, kwargs = case(name)
    kwargs.pop('chunk_size', None)
    assert torch.equal(rerank_official(Q, X, ranks, **kwargs), rerank_loop(Q, X, ranks, **kwargs))


@pytest.mark.parametrize('change, argument', [
    (dict(M=0), 'M'), (dict(M=2.5), 'M'), (dict(M=True), 'M'), (dict(K=-1), 'K'),
    (dict(beta=-0.1), 'beta'), (dict(beta=float('nan')), 'beta'), (dict(chunk_size=0), 'chunk_size'),
])
def test_invalid_hyper_parameters(change, argument):
    Q, X, ranks = make_data(nq=2, N=20, D=4)
    with pytest.raises(ValueError, match=argument):
        rerank(Q, X, ranks, **change)


def test_invalid_tensors():
    Q, X, ranks = make_data(nq=2, N=20, D=4)
    bad = [
        ((Q, X, ranks.double()), 'ranks'),
        ((Q, X, ranks[:, :1]), 'ranks'),
        ((Q, X, torch.cat([ranks, ranks])), 'ranks'),
        ((Q, X, ranks + X.shape[0]), 'ranks'),
        ((Q, X, ranks - 1), 'ranks'),
        ((Q[:, :3], X, ranks), 'Q and X'),
        ((Q.long(), X, ranks), 'Q'),
        ((Q, X[None], ranks), 'X'),
    ]
    for args, argument in bad:
        with pytest.raises(ValueError, match=argument):
            rerank(*args)


# --------------------------------------------------------------------------- public API: numpy, orientation, scores

def test_numpy_in_numpy_out_equals_torch():
    Q, X, ranks = make_data(dtype=torch.float32)
    expected = rerank(Q, X, ranks, M=50)
    out = rerank(Q.numpy(), X.numpy(), ranks.numpy(), M=50)
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    np.testing.assert_array_equal(out, expected.numpy())
    # unsigned, reversed-stride and read-only arrays are accepted too; the input is not modified
    ranks_np = ranks.numpy().astype(np.uint32)
    before = ranks_np.copy()
    X_rev = X.numpy()[::-1]
    ranks_rev = (X.shape[0] - 1 - ranks_np).astype(np.int64)      # the same ranking of the reversed rows
    read_only = Q.numpy().copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(rerank(read_only, X.numpy(), ranks_np, M=50), expected.numpy())
    np.testing.assert_array_equal(X.shape[0] - 1 - rerank(Q.numpy(), X_rev, ranks_rev, M=50), expected.numpy())
    np.testing.assert_array_equal(ranks_np, before)


def test_scores_are_the_sorted_mean_of_s1_and_s2_of_the_loop():
    Q, X, ranks = make_data(nq=7)
    for kwargs in (dict(M=50), dict(M=80, K=3, beta=0.5), dict(M=6, K=9), dict(M=50, chunk_size=2)):
        new, scores = rerank(Q, X, ranks, return_scores=True, **kwargs)
        kwargs.pop('chunk_size', None)
        loop_ranks, loop_scores = rerank_loop(Q, X, ranks, return_scores=True, **kwargs)
        m = min(kwargs['M'], ranks.shape[0])
        assert scores.shape == (m, Q.shape[0]) and scores.dtype == torch.float64
        assert torch.equal(new, loop_ranks) and torch.equal(new, rerank(Q, X, ranks, **kwargs))
        assert (scores[1:] <= scores[:-1]).all()
        # the loop forms every augmented descriptor; the fast path sums q . x: equal to rounding
        torch.testing.assert_close(scores, loop_scores, rtol=1e-12, atol=1e-12)


def test_numpy_scores_and_empty_top():
    Q, X, ranks = make_data(nq=3, dtype=torch.float32)
    new, scores = rerank(Q.numpy(), X.numpy(), ranks.numpy(), M=20, return_scores=True)
    assert isinstance(scores, np.ndarray) and scores.shape == (20, 3) and scores.dtype == np.float32
    new, scores = rerank(Q, X[:0], ranks[:0], M=20, return_scores=True)   # an empty database
    assert new.shape == (0, 3) and scores.shape == (0, 3)


@pytest.mark.parametrize('rows, M, fragment', [(30, 50, ', or pass M=30 to rerank the top 30'), (0, 20, r'\)$')])
def test_ranks_shorter_than_m_are_refused(rows, M, fragment):
    """A top-k search with k < M would silently rerank only k items: an error that names both fixes."""
    Q, X, ranks = make_data(nq=3, dtype=torch.float32)
    with pytest.raises(ValueError, match=f'ranks has {rows} rows .* M={M} .*search with k >= M.*{fragment}'):
        rerank(Q, X, ranks[:rows], M=M)
    with pytest.raises(ValueError, match='search with k >= M'):
        MDescAug(M=M)(X, Q, ranks[:rows])


def test_ranks_from_topk_turns_faiss_indices_into_columns():
    Q, X, ranks = make_data(nq=5)
    I = ranks[:30].T.contiguous()                                 # faiss: nq x k, row = a query's top k
    assert torch.equal(ranks_from_topk(I), ranks[:30])
    assert ranks_from_topk(I).is_contiguous()
    out = ranks_from_topk(I.numpy())
    assert isinstance(out, np.ndarray) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ranks[:30].numpy())
    assert torch.equal(rerank(Q, X, ranks_from_topk(I), M=20), rerank(Q, X, ranks[:30], M=20))
    with pytest.raises(ValueError, match='-1'):
        ranks_from_topk(np.array([[3, -1]]))
    with pytest.raises(ValueError, match='torch tensor or numpy array'):
        ranks_from_topk([[1, 2]])


def test_faiss_orientation_is_refused():
    Q, X, ranks = make_data(nq=5)
    with pytest.raises(ValueError, match='ranks_from_topk'):
        rerank(Q, X, ranks[:30].T.contiguous(), M=20)            # nq x k, k != nq
    square = ranks[:5]                                            # N' == nq: either reading fits
    with pytest.raises(ValueError, match='square.*ranks_from_topk.*columns_are_queries=True'):
        rerank(Q, X, square, M=3)
    with pytest.raises(ValueError, match='square'):
        rerank(Q.numpy(), X.numpy(), square.numpy(), M=3)
    assert torch.equal(rerank(Q, X, square, M=3, columns_are_queries=True), rerank_loop(Q, X, square, M=3))
    Q1, X1, ranks1 = make_data(nq=1)
    assert rerank(Q1, X1, ranks1[:1], M=1).shape == (1, 1)       # 1 x 1 reads the same both ways


def test_mixed_or_wrong_kinds_say_torch_tensor_or_numpy_array():
    Q, X, ranks = make_data(nq=2, N=20, D=4)
    for args in ((Q.numpy(), X, ranks), (Q, X, ranks.numpy()), ([[0.0] * 4], X, ranks),
                 (Q.numpy(), X.numpy(), ranks.numpy().astype(float)),
                 (Q.numpy().astype(int), X.numpy(), ranks.numpy())):
        with pytest.raises(ValueError, match='torch tensors? or (all )?numpy arrays?'):
            rerank(*args)


# ------------------------------------------------------------------ rerank_topk: faiss orientation, own vectors

@pytest.mark.parametrize('dtype, chunk_size', [(torch.float64, None), (torch.float32, None), (torch.float32, 2)])
def test_rerank_topk_equals_rerank_in_faiss_orientation(dtype, chunk_size):
    """Candidates with their own vectors (nq x k x D) and with the table X give the rows of
    rerank's top k, transposed, and its scores."""
    Q, X, ranks = make_data(nq=5, dtype=dtype)
    k = 40
    expected, expected_scores = rerank(Q, X, ranks[:k], M=k, K=5, return_scores=True, chunk_size=chunk_size)
    I = ranks[:k].T.contiguous()
    for vectors in (X[I], X):
        ids, scores = rerank_topk(Q, I, vectors, K=5, chunk_size=chunk_size)
        assert ids.shape == scores.shape == (5, k) and ids.dtype == torch.int64
        assert torch.equal(ids, expected.T) and torch.equal(scores, expected_scores.T)
    assert torch.equal(ids, rerank_loop(Q, X, ranks[:k], M=k, K=5)[:k].T)
    assert (scores[:, 1:] <= scores[:, :-1]).all()


def test_rerank_topk_numpy_and_ids_of_a_larger_collection():
    """The ids are only carried along: any non-negative ids (a vector database's) come back
    permuted within each row, as numpy when given numpy."""
    Q, X, ranks = make_data(nq=4, dtype=torch.float32)
    I = ranks[:25].T.contiguous()
    ids, scores = rerank_topk(Q.numpy(), (I * 1000 + 7).numpy(), X[I].numpy(), K=3)
    expected, _ = rerank_topk(Q, I, X[I], K=3)
    assert isinstance(ids, np.ndarray) and isinstance(scores, np.ndarray) and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, (expected * 1000 + 7).numpy())


@pytest.mark.parametrize('change, fragment', [
    (lambda Q, I, V: (Q, I, V[:, :-1]), r'vectors \(\(3, 9, 32\)\) must be nq x k x D'),
    (lambda Q, I, V: (Q[:2], I, V), 'one row per query'),
    (lambda Q, I, V: (Q, I, V[..., :8]), 'same descriptor size'),
    (lambda Q, I, V: (Q, I.float(), V), 'I must be a 2-D integer'),
    (lambda Q, I, V: (Q, I.masked_fill(I == I[0, 3], -1), V), '-1'),
    (lambda Q, I, V: (Q, I, V[None]), 'vectors must be'),
])
def test_rerank_topk_refuses_mismatched_candidates(change, fragment):
    Q, X, ranks = make_data(nq=3, dtype=torch.float32)
    I = ranks[:10].T.contiguous()
    with pytest.raises(ValueError, match=fragment):
        rerank_topk(*change(Q, I, X[I]))

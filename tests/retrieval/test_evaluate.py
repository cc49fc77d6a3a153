"""revisitop metrics: bit-exact against the official compute_map, hand cases, edge cases."""

import warnings
from pathlib import Path

import numpy as np
import pytest

from test.retrieval.evaluate import compute_map, compute_map_from_positions, evaluate_revisitop, format_results
from tests.reference.official_metrics import official_compute_map

REAL = Path(__file__).resolve().parents[3] / "shared/data/revisitop"


# --------------------------------------------------------------------------- helpers

def random_case(seed):
    """Random rankings (possibly truncated) with random ok/junk sets, overlaps and empty queries."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    nq = int(rng.integers(1, 8))
    n_rank = int(rng.integers(1, n + 1)) if rng.random() < 0.5 else n
    ranks = np.stack([rng.permutation(n)[:n_rank] for _ in range(nq)], axis=1)
    gnd = []
    for q in range(nq):
        if rng.random() < 0.15:
            ok = np.zeros(0, dtype=np.int64)
        else:
            ok = rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False)
            if not np.isin(ranks[:, q], ok).any():  # official crashes if no positive is ranked
                ok = np.append(ok, ranks[int(rng.integers(n_rank)), q])
        junk_pool = np.arange(n) if rng.random() < 0.5 else np.setdiff1d(np.arange(n), ok)
        size = int(rng.integers(0, len(junk_pool) + 1)) if len(junk_pool) and rng.random() < 0.8 else 0
        junk = rng.choice(junk_pool, size=size, replace=False)
        entry = {"ok": ok.tolist() if rng.random() < 0.5 else ok}
        if rng.random() < 0.9:
            entry["junk"] = junk
        gnd.append(entry)
    if all(len(g["ok"]) == 0 for g in gnd):  # official: ZeroDivisionError (tested separately)
        gnd[0]["ok"] = [int(ranks[0, 0])]
    kappas = sorted(set(rng.integers(1, 15, size=int(rng.integers(0, 4))).tolist()))
    return ranks, gnd, kappas


def assert_identical(ours, ref):
    m, aps, pr, prs = ours
    rm, raps, rpr, rprs = ref
    assert (m == rm) or (np.isnan(m) and np.isnan(rm))
    assert np.array_equal(aps, raps, equal_nan=True)
    assert np.array_equal(pr, rpr, equal_nan=True)
    assert np.array_equal(prs, rprs, equal_nan=True)


def positions_via_inverse_permutation(ranks, gnd):
    """How a bounded-memory search would report positions: inverse permutation per query."""
    pos, junk_pos = [], []
    for q, g in enumerate(gnd):
        inv = np.full(ranks.max() + 1 + 1000, -1)
        inv[ranks[:, q]] = np.arange(ranks.shape[0])
        p = inv[np.asarray(g["ok"], dtype=np.int64)]
        j = inv[np.asarray(g.get("junk", []), dtype=np.int64)]
        pos.append(np.sort(p[p >= 0])[::-1])  # unsorted input is allowed
        junk_pos.append(j[j >= 0])
    return pos, junk_pos


# --------------------------------------------------------------------------- tests

def test_matches_official_on_random_cases():
    n_overlap = n_trunc = n_empty = 0
    for seed in range(400):
        ranks, gnd, kappas = random_case(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours = compute_map(ranks, gnd, kappas)
        assert_identical(ours, official_compute_map(ranks, gnd, kappas))
        n_trunc += any(not np.isin(g["ok"], ranks[:, q]).all() for q, g in enumerate(gnd))
        n_empty += any(len(g["ok"]) == 0 for g in gnd)
        n_overlap += any(np.intersect1d(g["ok"], g.get("junk", [])).size for g in gnd)
    assert n_overlap > 50 and n_trunc > 50 and n_empty > 50  # the edge cases were exercised


def test_positions_entry_point_matches_compute_map():
    for seed in range(100):
        ranks, gnd, kappas = random_case(seed)
        pos, junk_pos = positions_via_inverse_permutation(ranks, gnd)
        nres = [len(g["ok"]) for g in gnd]
        assert_identical(compute_map_from_positions(pos, junk_pos, nres, kappas),
                         compute_map(ranks, gnd, kappas))


def test_hand_computed_ap():
    # db ids 0..5. Query 0: ok {10->id 0, id 2}, junk {1}; ranking 0, 1, 2, ...
    # positives at positions 0 and 2, junk at 1 -> positions 0, 1 after junk removal -> AP 1.
    ranks = np.array([[0, 1, 2, 3, 4, 5]]).T
    m, aps, _, _ = compute_map(ranks, [{"ok": [0, 2], "junk": [1]}], kappas=[])
    assert aps[0] == 1.0 and m == 1.0

    # positives at positions 1 and 3, 2 in total, no junk: trapezoids
    # j=0, rank 1: (0/1 + 1/2) * 1/2 / 2 = 0.125 ; j=1, rank 3: (1/3 + 2/4) * 1/2 / 2 = 5/24
    m, aps, _, _ = compute_map(ranks, [{"ok": [1, 3], "junk": []}], kappas=[])
    assert aps[0] == pytest.approx(0.125 + 5 / 24) and aps[0] == pytest.approx(1 / 3)

    # 3 positives but the (truncated) ranking shows only 2, at positions 0 and 1:
    # (1 + 1) * 1/3 / 2 + (1/1 + 2/2) * 1/3 / 2 = 2/3  (nres stays 3)
    m, aps, _, _ = compute_map(ranks[:4], [{"ok": [0, 1, 5]}], kappas=[])
    assert aps[0] == pytest.approx(2 / 3)

    # an image both ok and junk stays a positive, and pushes later positives up by one:
    # ok {0, 2}, junk {0}: positions 0 and 2 -> 0 and 1 -> AP 1
    m, aps, _, _ = compute_map(ranks, [{"ok": [0, 2], "junk": [0]}], kappas=[])
    assert aps[0] == 1.0


def test_hand_computed_mpk():
    ranks = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                      [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]).T
    gnd = [
        {"ok": [0, 2], "junk": []},  # 1-based positions 1, 3 -> last positive 3
        {"ok": [8, 4], "junk": []},  # 1-based positions 2, 6 -> last positive 6
    ]
    _, _, pr, prs = compute_map(ranks, gnd, kappas=[1, 5, 10])
    # kq = min(last positive, k): q0: k=1 -> 1/1, k=5 -> kq 3 -> 2/3, k=10 -> kq 3 -> 2/3
    #                             q1: k=1 -> 0/1, k=5 -> 1/5, k=10 -> kq 6 -> 2/6
    np.testing.assert_allclose(prs, [[1, 2 / 3, 2 / 3], [0, 1 / 5, 1 / 3]])
    np.testing.assert_allclose(pr, [0.5, (2 / 3 + 1 / 5) / 2, 0.5])


def test_nan_when_no_query_has_positives():
    ranks = np.tile(np.arange(5)[:, None], (1, 3))
    gnd = [{"ok": [], "junk": [1]}, {"ok": np.zeros(0, dtype=np.int64)}, {"ok": []}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m, aps, pr, prs = compute_map(ranks, gnd, kappas=[1, 5])
    assert np.isnan(m) and np.isnan(aps).all() and np.isnan(pr).all() and np.isnan(prs).all()
    assert pr.shape == (2,) and prs.shape == (3, 2)


def test_empty_query_excluded_from_mean():
    ranks = np.tile(np.arange(4)[:, None], (1, 2))
    m, aps, pr, _ = compute_map(ranks, [{"ok": [0]}, {"ok": []}], kappas=[1])
    assert m == 1.0 and aps[0] == 1.0 and np.isnan(aps[1]) and pr.tolist() == [1.0]


def test_positives_never_ranked_give_zero():
    # official code crashes (max of empty); documented choice: AP 0, precisions 0
    ranks = np.array([[0, 1]]).T
    m, aps, pr, prs = compute_map(ranks, [{"ok": [5, 6], "junk": [0]}], kappas=[1, 5])
    assert m == 0.0 and aps.tolist() == [0.0] and prs.tolist() == [[0.0, 0.0]]


def test_input_validation():
    with pytest.raises(ValueError):
        compute_map(np.zeros((3, 2), dtype=np.int64), [{"ok": [0]}], kappas=[1])
    with pytest.raises(ValueError):
        compute_map(np.zeros((3, 1), dtype=np.int64), [{"ok": [0]}], kappas=[0])
    with pytest.raises(ValueError):
        compute_map(np.zeros((3, 1)), [{"ok": [0]}])


def test_format_results_exact():
    results = {
        "E": {"map": 0.874512, "mpr": np.array([1.0, 0.92, 0.887142])},
        "M": {"map": 0.7231, "mpr": np.array([0.985714, 0.9, 0.85])},
        "H": {"map": 0.501234, "mpr": np.array([0.9, 0.754286, 0.6])},
    }
    assert format_results(results, (1, 5, 10)) == [
        "Retrieval results: mAP E: 87.45, M: 72.31, H: 50.12",
        "Retrieval results: mP@k[1, 5, 10] E: [100.00, 92.00, 88.71], "
        "M: [98.57, 90.00, 85.00], H: [90.00, 75.43, 60.00]"]
    assert format_results(results) == format_results(results, [1, 5, 10])
    nan = {n: {"map": float("nan"), "mpr": np.full(1, np.nan)} for n in "EMH"}
    assert format_results(nan, [1])[0] == "Retrieval results: mAP E: nan, M: nan, H: nan"
    with pytest.raises(TypeError):
        format_results(results, "roxford5k")


@pytest.mark.parametrize("dataset", ["roxford5k", "rparis6k"])
def test_real_ground_truth(dataset):
    path = REAL / f"gnd_{dataset}.pkl"
    if not path.is_file():
        pytest.skip(f"real ground truth not found at {path} (shared data not checked out)")
    from test.data.gnd import load_gnd, protocols

    g = load_gnd(REAL, dataset, gnd_path=path)
    protos = protocols(g)

    # ideal ranking: easy, then hard, then junk, then everything else -> every protocol is perfect
    cols = []
    for q in g.gnd:
        head = np.concatenate([q["easy"], q["hard"], q["junk"]])
        cols.append(np.concatenate([head, np.setdiff1d(np.arange(g.n), head)]))
    res = evaluate_revisitop(np.stack(cols, axis=1), g)
    for name in "EMH":
        assert res[name]["map"] == pytest.approx(1.0, abs=1e-12)
        assert res[name]["mpr"].tolist() == [1.0, 1.0, 1.0]
    n_no_easy = sum(len(q["easy"]) == 0 for q in g.gnd)
    assert np.isnan(res["E"]["aps"]).sum() == n_no_easy

    # random full ranking: identical to the official code for all three protocols
    rng = np.random.default_rng(1)
    ranks = np.stack([rng.permutation(g.n) for _ in range(g.nq)], axis=1)
    res = evaluate_revisitop(ranks, protos, kappas=[1, 5, 10])
    for name in "EMH":
        ref = official_compute_map(ranks, protos[name], [1, 5, 10])
        r = res[name]
        assert_identical((r["map"], r["aps"], r["mpr"], r["prs"]), ref)

"""sweep.py and test/retrieval/rerank_sweep.py: every grid point equals a single rerank + evaluation, exactly;
the CSV, JSON and plots are written; bad value lists stop with one line."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from modules.reranking import rerank
from test.data.gnd import protocols
from test.retrieval.evaluate import evaluate_revisitop, top_block_evaluator
from test.retrieval.rerank_sweep import anchor, line, run_sweep, sweep_tops
from tests.entry_points import ROOT, error_line, run_script


def clustered(nq=6, n=200, d=24, seed=0):
    """Queries and database items drawn around a few centres, and a ground truth that follows them:
    items of the query's centre are easy (close) or hard (far), a few junk; everything else negative."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d))
    label = rng.integers(0, 4, n)
    spread = rng.choice([0.5, 1.5], n)
    X = centres[label] + spread[:, None] * rng.standard_normal((n, d))
    q_label = np.arange(nq) % 4
    Q = centres[q_label] + 0.8 * rng.standard_normal((nq, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    gnd = []
    for j in range(nq):
        same = np.flatnonzero(label == q_label[j])
        gnd.append({"bbx": [0.0, 0.0, 1.0, 1.0], "easy": same[spread[same] < 1][3:].tolist(),
                    "hard": same[spread[same] > 1].tolist(), "junk": same[spread[same] < 1][:3].tolist()})
    return Q.astype(np.float32), X.astype(np.float32), gnd


def tied():
    """Small integer vectors with duplicate rows: exact products, so real ties in every sort."""
    g = torch.Generator().manual_seed(1)
    X = torch.randint(-2, 3, (40, 6), generator=g).double()
    X = torch.cat([X, X[:15]])
    Q = torch.randint(-2, 3, (5, 6), generator=g).double()
    return Q, X, torch.argsort(X @ Q.T, dim=0, descending=True, stable=True)


GRID = dict(Ms=[5, 20, 60, 500], Ks=[0, 1, 3, 4], betas=[0.0, 0.1, 0.5])


@pytest.mark.parametrize("rows, chunk_size", [(None, None), (120, None), (None, 2), (30, 4)])
def test_grid_points_equal_single_reranks(rows, chunk_size):
    Q, X, _ = clustered()
    Q, X = torch.from_numpy(Q), torch.from_numpy(X)
    ranks = torch.argsort(X @ Q.T, dim=0, descending=True, stable=True)
    grid = dict(GRID)
    if rows is not None:                                              # N' < N: only the Ms it holds
        with pytest.raises(ValueError, match="search with k >= M"):
            next(sweep_tops(Q, X, ranks[:rows], chunk_size=chunk_size, **grid))
        ranks, grid["Ms"] = ranks[:rows], [M for M in GRID["Ms"] if M <= rows]
    seen = 0
    for M, m, tops in sweep_tops(Q, X, ranks, chunk_size=chunk_size, **grid):
        assert m == min(M, ranks.shape[0])
        for (K, beta), top in tops.items():
            single = rerank(Q, X, ranks, M=M, K=K, beta=beta, chunk_size=chunk_size)
            assert torch.equal(top, single[:m]), (M, K, beta)
            seen += 1
    assert seen == len(grid["Ms"]) * 4 * 3


def test_grid_points_equal_single_reranks_with_ties():
    Q, X, ranks = tied()
    for M, m, tops in sweep_tops(Q, X, ranks, [10, 30], [0, 2, 3, 9], [0.0, 0.5]):
        for (K, beta), top in tops.items():
            assert torch.equal(top, rerank(Q, X, ranks, M=M, K=K, beta=beta)[:m]), (M, K, beta)


def test_sweep_maps_equal_single_evaluations():
    Q, X, gnd = clustered(nq=8, n=300)
    protos = protocols(gnd)
    ranks = np.argsort(-(X @ Q.T), axis=0, kind="stable")
    result = run_sweep(Q, X, ranks, protos, [10, 50, 400], [1, 3, 9], [0.05, 0.15, 0.3])
    assert len(result["records"]) == 27
    changed = 0
    for record in result["records"]:
        single = rerank(Q, X, ranks, M=record["M"], K=record["K"], beta=record["beta"])
        maps = evaluate_revisitop(single, protos)
        for p in "EMH":
            assert record[f"mAP_{p}"] == 100 * maps[p]["map"], record          # exactly, not approximately
        changed += not np.array_equal(single, ranks)
    assert changed > 0                                                        # reranking did something
    initial = evaluate_revisitop(ranks, protos)
    assert result["initial"] == {f"mAP_{p}": 100 * initial[p]["map"] for p in "EMH"}


@pytest.mark.parametrize("m", [0, 1, 37, 300])
def test_top_block_evaluator_equals_full_evaluation(m):
    Q, X, gnd = clustered(nq=8, n=300, seed=2)
    protos = protocols(gnd)
    ranks = np.argsort(-(X @ Q.T), axis=0, kind="stable")
    top = ranks[:m][np.random.default_rng(m).permutation(m)]
    full = ranks.copy()
    full[:m] = top
    expected = evaluate_revisitop(full, protos)
    got = top_block_evaluator(ranks, protos, m)(top)
    for p in "EMH":
        for key in ("map", "aps", "mpr", "prs"):
            np.testing.assert_array_equal(got[p][key], expected[p][key])


def test_anchor_and_lines():
    records = [{"M": M, "K": K, "beta": b, "mAP_M": float(M + K + 10 * b), "mAP_H": 0.0}
               for M in (100, 400) for K in (1, 9) for b in (0.1, 0.2)]
    assert anchor(records, {"M": 400, "K": 9, "beta": 0.15}) == {"M": 400, "K": 9, "beta": 0.2}  # 0.15 not in grid
    assert anchor(records, {"M": 800, "K": 3, "beta": 0.1}) == {"M": 400, "K": 9, "beta": 0.1}
    along = line(records, "K", {"M": 100, "K": 9, "beta": 0.2})
    assert [(r["M"], r["K"], r["beta"]) for r in along] == [(100, 1, 0.2), (100, 9, 0.2)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    Q, X, gnd = clustered(nq=6, n=120)
    np.save(root / "Q.npy", Q)
    np.save(root / "X.npy", X)
    with open(root / "gnd.pkl", "wb") as handle:
        pickle.dump({"imlist": [f"db{i}" for i in range(len(X))], "qimlist": [f"q{j}" for j in range(len(Q))],
                     "gnd": gnd}, handle)
    return root


GRID_ARGS = ["--M", "20,100", "--K", "1,3,9", "--beta", "0.15,0.3"]


def test_entry_point_writes_table_csv_json_and_plots(workspace):
    pytest.importorskip("matplotlib")
    import cv2

    done = run_script("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--gnd", "gnd.pkl", *GRID_ARGS,
                      "--out-dir", "out", "--check-single", cwd=workspace)
    assert done.returncode == 0, done.stderr
    assert "12 single rerank + evaluate runs give identical mAPs" in done.stdout
    out = workspace / "out"
    result = json.loads((out / "sweep.json").read_text())
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0] == "M,K,beta,mAP_E,mAP_M,mAP_H" and len(rows) == 1 + 12 == 1 + len(result["records"])
    for row, record in zip(rows[1:], result["records"]):
        assert [float(v) for v in row.split(",")] == [record[k] for k in ("M", "K", "beta", "mAP_E", "mAP_M", "mAP_H")]
    # the JSON holds what the library computes, and the printed table shows it
    Q, X = np.load(workspace / "Q.npy"), np.load(workspace / "X.npy")
    gnd = pickle.loads((workspace / "gnd.pkl").read_bytes())["gnd"]
    again = run_sweep(Q, X, np.argsort(-(X @ Q.T), axis=0, kind="stable"), protocols(gnd), [20, 100], [1, 3, 9],
                      [0.15, 0.3])
    assert result["records"] == again["records"] and result["grid"] == {"M": [20, 100], "K": [1, 3, 9],
                                                                         "beta": [0.15, 0.3]}
    assert f"{again['records'][0]['mAP_M']:6.2f}" in done.stdout
    # K=9 is a default in the grid, M=400 and beta=0.15... M falls back to the best grid point
    assert result["plots_fixed"]["K"] == 9 and result["plots_fixed"]["beta"] == 0.15
    for name in ("mAP_vs_M", "mAP_vs_K", "mAP_vs_beta", "heatmap_K_beta"):
        picture = cv2.imread(str(out / f"{name}.png"))
        assert picture is not None and picture.shape[0] > 200 and picture.std() > 10, name
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_without_matplotlib_csv_and_json_and_one_line(workspace):
    code = ("import sys, runpy; sys.modules['matplotlib'] = None; sys.argv = ['sweep.py'] + sys.argv[1:]; "
            f"sys.path.insert(0, {str(ROOT)!r}); runpy.run_path({str(ROOT / 'sweep.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, "--query", "Q.npy", "--db", "X.npy", "--gnd", "gnd.pkl",
                           *GRID_ARGS, "--out-dir", "nompl"], cwd=workspace, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert [l for l in done.stdout.splitlines() if "matplotlib" in l] == \
        ["plots need matplotlib: pip install -r requirements-demo.txt (CSV and JSON are written)"]
    assert sorted(p.name for p in (workspace / "nompl").iterdir()) == ["sweep.csv", "sweep.json"]


@pytest.mark.parametrize("grid, fragments", [
    (["--M", "0,100"], ["--M", ">= 1"]),
    (["--M", "100,1.5"], ["--M", "'1.5' is not a number"]),
    (["--K", "3,-1"], ["--K", ">= 0"]),
    (["--M", "5,100", "--K", "1,5"], ["every K must be below every M", "K=5 >= M=5"]),
    (["--beta", "0.1,-0.2"], ["--beta", ">= 0"]),
    (["--beta", "0.1,nan"], ["--beta", "finite"]),
    (["--beta", "inf"], ["--beta", "finite"]),
    (["--K", "1,,3"], ["--K", "'' is not a number"]),
])
def test_bad_value_lists_are_one_line_exit_2(workspace, entry, grid, fragments):
    subprocess = grid[1] == "0,100"  # one case as a real process, the rest in-process (fast)
    done = entry("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--gnd", "gnd.pkl", *grid, "--out-dir", "bad",
                 cwd=workspace, subprocess=subprocess)
    error_line(done, *fragments)
    assert not (workspace / "bad").exists()


def test_output_never_replaces_an_input(workspace, entry):
    """A ground truth that happens to be named like an output, in the output folder, is refused before
    anything is read or written."""
    folder = workspace / "inputs"
    folder.mkdir(exist_ok=True)
    (folder / "sweep.json").write_bytes((workspace / "gnd.pkl").read_bytes())
    done = entry("sweep.py", "--query", "Q.npy", "--db", "X.npy", "--gnd", "inputs/sweep.json",
                 "--out-dir", "inputs", cwd=workspace)
    error_line(done, "refusing to write inputs/sweep.json", "it is an input of this run (--gnd)")
    assert (folder / "sweep.json").read_bytes() == (workspace / "gnd.pkl").read_bytes()
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.json"]

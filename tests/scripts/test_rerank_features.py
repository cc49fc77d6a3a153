"""rerank_features.py and test/retrieval/baselines.py: feature-only reranking equals test.py's; alpha-QE and
alpha-DBA against plain loops."""

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test.data.synthetic import write_checkpoint, write_revisitop
from test.retrieval.baselines import alpha_dba, alpha_qe, dba_qe_ranks, dba_ranks, qe_ranks

ROOT = Path(__file__).resolve().parents[2]


def run_script(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def random_data(nq=4, n=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[rng.integers(0, n, nq)] + 0.5 * rng.standard_normal((nq, d))
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return Q, X


def loop_qe(Q, X, n, alpha, include_query=True):
    out = []
    for q in Q:
        sims = X @ q
        order = sorted(range(len(X)), key=lambda i: (-sims[i], i))
        v = q.copy() if include_query or n == 0 else np.zeros_like(q)
        for i in order[:n]:
            v = v + max(sims[i], 0.0) ** alpha * X[i]
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def loop_dba(X, k, alpha):
    out = []
    for i, x in enumerate(X):
        sims = X @ x
        others = sorted((j for j in range(len(X)) if j != i), key=lambda j: (-sims[j], j))
        v = x.copy()
        for j in others[:k]:
            v = v + max(sims[j], 0.0) ** alpha * X[j]
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def loop_ranks(Q, X):
    return np.array([sorted(range(len(X)), key=lambda i: (-(X[i] @ q), i)) for q in Q]).T


@pytest.mark.parametrize("n,alpha", [(2, 3.0), (1, 3.0), (5, 1.0), (0, 3.0)])
def test_alpha_qe_matches_loop(n, alpha):
    Q, X = random_data(seed=n)
    ranks = torch.from_numpy(loop_ranks(Q, X))
    got = alpha_qe(torch.from_numpy(Q), torch.from_numpy(X), ranks, n, alpha).numpy()
    np.testing.assert_allclose(got, loop_qe(Q, X, n, alpha), rtol=1e-12, atol=1e-12)
    new = qe_ranks(torch.from_numpy(Q), torch.from_numpy(X), None, n, alpha).numpy()
    np.testing.assert_array_equal(new, loop_ranks(loop_qe(Q, X, n, alpha), X))


def test_alpha_qe_without_query_matches_loop():
    Q, X = random_data(seed=7)
    ranks = torch.from_numpy(loop_ranks(Q, X))
    got = alpha_qe(torch.from_numpy(Q), torch.from_numpy(X), ranks, 3, 3.0, include_query=False).numpy()
    np.testing.assert_allclose(got, loop_qe(Q, X, 3, 3.0, include_query=False), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,alpha,chunk", [(2, 3.0, 1024), (3, 2.0, 7), (0, 3.0, 5), (40, 3.0, 8)])
def test_alpha_dba_matches_loop(k, alpha, chunk):
    Q, X = random_data(seed=k + 10)
    got = alpha_dba(torch.from_numpy(X), k, alpha, chunk_size=chunk).numpy()
    np.testing.assert_allclose(got, loop_dba(X, min(k, len(X) - 1), alpha), rtol=1e-12, atol=1e-12)
    Xd = loop_dba(X, min(k, len(X) - 1), alpha)
    np.testing.assert_array_equal(dba_ranks(torch.from_numpy(Q), torch.from_numpy(X), k, alpha).numpy(),
                                  loop_ranks(Q, Xd))
    both = dba_qe_ranks(torch.from_numpy(Q), torch.from_numpy(X), k, alpha, 2, 3.0).numpy()
    np.testing.assert_array_equal(both, loop_ranks(loop_qe(Q, Xd, 2, 3.0), Xd))


def test_dba_tie_prefers_lower_index():
    X = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.0, 1.0]], dtype=torch.float64)
    got = alpha_dba(X, 1, 1.0)
    expected = X[0] + 0.6 * X[1]  # items 1 and 2 tie for item 0: the lower index wins
    np.testing.assert_allclose(got[0].numpy(), (expected / expected.norm()).numpy())


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank_features")
    write_checkpoint(root / "weights" / "CVPR2022_CVNet_R50.pyth", depth=50, seed=5)
    write_revisitop(root / "revisitop", "roxford5k", n_db=12, n_query=3, seed=3)
    done = run_script("test.py", "TEST.WEIGHTS", "./weights", "TEST.DATA_DIR", "./revisitop",
                      "TEST.DATASET_LIST", "roxford5k", "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0",
                      "TEST.SAVE_FEATURES", "True", "TEST.CACHE", "False", "SupG.M", "6", "SupG.K", "2",
                      cwd=root)
    assert done.returncode == 0, done.stderr
    return root


def test_csv_without_ground_truth_has_indices_only(saved_run, tmp_path):
    saved = np.load(saved_run / "roxford5k.npz")
    done = run_script("rerank_features.py", "--features", saved_run / "roxford5k.npz", "--M", 6, "--K", 2,
                      "--out", "top.csv", "--topk", 2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "top.csv").read_text().splitlines()
    assert rows[0] == "query,rank,db_index" and rows[1:3] == [f"0,{r},{saved['ranks'][r, 0]}" for r in range(2)]


def test_m_k_beta_come_from_the_config_test_py_wrote(saved_run, tmp_path):
    """--cfg <OUT_DIR>/config.yaml gives the run's SupG.M/K/beta: the same ranks as test.py."""
    saved = np.load(saved_run / "roxford5k.npz")
    done = run_script("rerank_features.py", "--features", saved_run / "roxford5k.npz", "--cfg",
                      saved_run / "config.yaml", "--out", "top.npy", "--topk", 12, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "M=6 K=2 beta=0.15" in done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "top.npy"), saved["ranks"])
    contradiction = run_script("rerank_features.py", "--features", saved_run / "roxford5k.npz", "--cfg",
                               saved_run / "config.yaml", "--K", 3, "--out", "x.npy", cwd=tmp_path)
    assert contradiction.returncode == 2 and "--K 3 contradicts 2" in contradiction.stderr


def test_feature_only_rerank_equals_test_py(saved_run):
    root = saved_run
    done = run_script("rerank_features.py", "--features", "roxford5k.npz", "--M", 6, "--K", 2,
                      "--gnd", "revisitop/roxford5k/gnd_roxford5k.pkl", "--out", "top.npy", "--topk", 12,
                      cwd=root)
    assert done.returncode == 0, done.stderr
    saved = np.load(root / "roxford5k.npz")
    np.testing.assert_array_equal(np.load(root / "top.npy"), saved["ranks"])
    log_lines = [l for l in (root / "log.txt").read_text().splitlines() if l.startswith("Retrieval results")]
    out_lines = [l for l in done.stdout.splitlines() if l.startswith("Retrieval results")]
    assert out_lines == log_lines and len(out_lines) == 2


def test_npy_inputs_all_methods_and_csv(saved_run, tmp_path):
    saved = np.load(saved_run / "roxford5k.npz")
    np.save(tmp_path / "Q.npy", saved["Q"])
    np.save(tmp_path / "X.npy", saved["X"])
    np.save(tmp_path / "R.npy", saved["ranks_global"].T)  # query-major is accepted too
    done = run_script("rerank_features.py", "--query", "Q.npy", "--db", "X.npy", "--ranks", "R.npy",
                      "--methods", "none,supg,aqe,dba,dba+aqe", "--M", 6, "--K", 2, "--out", "top.csv",
                      "--topk", 3, "--gnd", saved_run / "revisitop/roxford5k/gnd_roxford5k.pkl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Retrieval results: mAP E: ") == 5
    rows = [r.split(",") for r in (tmp_path / "top.supg.csv").read_text().splitlines()]
    assert rows[0] == ["query", "query_name", "rank", "db_index", "db_name"] and len(rows) == 1 + 3 * 3
    gnd = pickle.loads((saved_run / "revisitop/roxford5k/gnd_roxford5k.pkl").read_bytes())
    assert [int(r[3]) for r in rows[1:4]] == list(saved["ranks"][:3, 0])
    assert all(r[1] == gnd["qimlist"][int(r[0])] and r[4] == gnd["imlist"][int(r[3])] for r in rows[1:])
    Q, X = torch.from_numpy(saved["Q"]), torch.from_numpy(saved["X"])
    aqe = np.array([[int(r.split(",")[3]) for r in (tmp_path / "top.aqe.csv").read_text().splitlines()[1:]]])
    assert list(aqe.reshape(3, 3)[1]) == list(qe_ranks(Q, X)[:3, 1].numpy())


@pytest.mark.parametrize("args,message", [
    (["--query", "missing.npy", "--db", "missing.npy", "--out", "a.npy"], "file not found"),
    (["--features", "bad.npz", "--out", "a.npy"], "not a test.py features file"),
    (["--features", "f.npz"], "nothing to do"),
    (["--features", "f.npz", "--out", "a.npy", "--methods", "supg,xqe"], "unknown method"),
    (["--features", "onem.npz", "--out", "a.npy"], "onemeval"),
    (["--features", "f.npz", "--ranks", "r.npy", "--out", "a.npy"], "onemeval"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, message):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bad.npz", A=np.zeros(3))
    np.savez(tmp_path / "f.npz", Q=rng.random((2, 4), dtype=np.float32), X=rng.random((5, 4), dtype=np.float32))
    np.savez(tmp_path / "onem.npz", Q=rng.random((2, 4), dtype=np.float32), X=rng.random((5, 4), dtype=np.float32),
             ranks_global=np.array([[0, 1], [7, 2]]))
    np.save(tmp_path / "r.npy", np.array([[0, 1], [7, 2]]))
    done = run_script("rerank_features.py", *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0

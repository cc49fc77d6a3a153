"""test.py run as a user runs it, on a generated revisitop dataset and a CVNet-layout checkpoint."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test.data.synthetic import write_checkpoint, write_revisitop
from tests.reference.official_metrics import official_compute_map

ROOT = Path(__file__).resolve().parents[2]
PAPER_FLAGS = "SupG.gemp SupG.rgem SupG.sgem SupG.relup SupG.rerank SupG.onemeval False"


def run_test_py(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "test.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    write_checkpoint(root / "weights" / "CVPR2022_CVNet_R50.pyth", depth=50, seed=5)
    gnds = {name: write_revisitop(root / "revisitop", name, n_db=10, n_query=3, seed=i)
            for i, name in enumerate(["roxford5k", "rparis6k"])}
    return root, gnds


def official_maps(ranks, gnd):
    protocols = {
        "E": [{"ok": g["easy"], "junk": g["junk"] + g["hard"]} for g in gnd["gnd"]],
        "M": [{"ok": g["easy"] + g["hard"], "junk": g["junk"]} for g in gnd["gnd"]],
        "H": [{"ok": g["hard"], "junk": g["junk"] + g["easy"]} for g in gnd["gnd"]],
    }
    return {name: official_compute_map(ranks, p, [1, 5, 10])[0] for name, p in protocols.items()}


def test_paper_command_line_end_to_end(workspace):
    root, gnds = workspace
    line = f"MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop {PAPER_FLAGS}"
    done = run_test_py(*line.split(), "TEST.SAVE_FEATURES", "True", "SupG.M", "6", "SupG.K", "2",
                       "TEST.NUM_WORKERS", "1", cwd=root)
    assert done.returncode == 0, done.stderr
    log = (root / "log.txt").read_text()
    assert log.count("Retrieval results: mAP E: ") == 2
    for name, gnd in gnds.items():
        saved = np.load(root / f"{name}.npz")
        Q, X = saved["Q"], saved["X"]
        assert Q.shape == (3, 2048) and X.shape == (10, 2048) and Q.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, rtol=1e-5)
        similarity = X @ Q.T
        ranked = np.take_along_axis(similarity, saved["ranks_global"], axis=0)
        assert (np.diff(ranked, axis=0) <= 1e-6).all()  # ranks_global is by descending X Q^T
        ranks = saved["ranks"]
        assert (np.sort(ranks, axis=0) == np.arange(10)[:, None]).all()
        np.testing.assert_array_equal(ranks[6:], saved["ranks_global"][6:])  # only the top M moves
        maps = official_maps(ranks, gnd)
        line = f"Retrieval results: mAP E: {maps['E'] * 100:.2f}, M: {maps['M'] * 100:.2f}, H: {maps['H'] * 100:.2f}"
        assert line in log
        for key in "EMH":
            assert saved[f"map{key}"] == pytest.approx(maps[key])


PLAIN_SWITCHES = ["TEST.FOLD_BN", "off", "TEST.CHANNELS_LAST", "off", "TEST.UINT8_TRANSFER", "off",
                  "TEST.BATCH_SIZE", "1", "TEST.NUM_WORKERS", "0"]


def test_fast_defaults_give_the_plain_paths_ranks_and_maps(workspace, tmp_path):
    """The paper's command line with every speed default (BN folded, channels-last, uint8 transfer)
    against the plain modules, one image at a time: same ranks, same printed mAP, features equal
    to float rounding."""
    root, _ = workspace
    line = f"MODEL.DEPTH 50 TEST.WEIGHTS {root / 'weights'} TEST.DATA_DIR {root / 'revisitop'} {PAPER_FLAGS}"
    runs = {}
    for name, extra in (("fast", []), ("plain", PLAIN_SWITCHES)):
        out = tmp_path / name
        done = run_test_py(*line.split(), "TEST.SAVE_FEATURES", "True", "SupG.M", "6", "SupG.K", "2",
                           "TEST.CACHE", "False", "OUT_DIR", str(out), *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        results = [row for row in (out / "log.txt").read_text().splitlines() if row.startswith("Retrieval results")]
        runs[name] = out, results
    assert len(runs["fast"][1]) == 4 and runs["fast"][1] == runs["plain"][1]
    for dataset in ("roxford5k", "rparis6k"):
        fast, plain = (np.load(runs[name][0] / f"{dataset}.npz") for name in ("fast", "plain"))
        for key in ("ranks_global", "ranks"):
            np.testing.assert_array_equal(fast[key], plain[key])
        for key in ("Q", "X"):
            assert ((fast[key] * plain[key]).sum(1) >= 0.99999).all()


def test_missing_weights_is_one_line_exit_2(workspace, tmp_path):
    root, _ = workspace
    done = run_test_py("TEST.WEIGHTS", str(tmp_path / "none"), "TEST.DATA_DIR", str(root / "revisitop"),
                       "OUT_DIR", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "weights not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_key_is_one_line_exit_2(tmp_path):
    done = run_test_py("SupG.gemq", cwd=tmp_path)
    assert done.returncode == 2 and "SupG.gemq" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "log.txt").exists()


def test_help_lists_keys(tmp_path):
    done = run_test_py("--help", cwd=tmp_path)
    assert done.returncode == 0 and "SupG.onemeval" in done.stdout and "TEST.WEIGHTS" in done.stdout


def test_cache_serves_fresh_features_and_misses_on_flag_change(workspace, tmp_path):
    root, _ = workspace
    base = ["TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
            "TEST.DATASET_LIST", "roxford5k", "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0",
            "TEST.SAVE_FEATURES", "True", "SupG.M", "5", "SupG.K", "1"]

    def run(out, *extra):
        done = run_test_py(*base, "OUT_DIR", str(tmp_path / out), "TEST.CACHE_DIR", str(tmp_path / "cache"),
                           *extra, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout, np.load(tmp_path / out / "roxford5k.npz")

    first, fresh = run("a")
    second, cached = run("b", "SupG.K", "3")
    assert "from the cache" not in first and second.count("from the cache") == 2
    assert np.array_equal(cached["Q"], fresh["Q"]) and np.array_equal(cached["X"], fresh["X"])
    uncached, direct = run("c", "TEST.CACHE", "False")
    assert np.array_equal(direct["X"], fresh["X"])
    changed, other = run("d", "SupG.rgem", "False")
    assert "from the cache" not in changed and not np.array_equal(other["X"], fresh["X"])


def full_reference(Q, X, D, gnd, M, K):
    """The official +1M pipeline on a small scale: concatenate, full argsort, rerank, evaluate."""
    import torch

    from modules.reranking import rerank
    from test.data.gnd import protocols
    from test.retrieval.evaluate import evaluate_revisitop

    Q, X_all = torch.from_numpy(Q), torch.cat([torch.from_numpy(X), torch.from_numpy(D)])
    ranks = torch.sort(X_all @ Q.T, dim=0, descending=True, stable=True).indices
    ranks = rerank(Q, X_all, ranks, M=M, K=K).numpy()
    return ranks, evaluate_revisitop(ranks, protocols(gnd["gnd"]))


@pytest.mark.parametrize("fmt", ["official_pth", "npy16"])
def test_onemeval_matches_the_full_concatenated_ranking(workspace, tmp_path, fmt):
    import torch

    root, gnds = workspace
    rng = np.random.default_rng(9)
    D = rng.standard_normal((60, 2048)).astype(np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    if fmt == "official_pth":
        path = tmp_path / "feats_1m_RN50.pth"
        torch.save(torch.from_numpy(D), path)
    else:
        D = D.astype(np.float16)
        path = tmp_path / "feats.npy"
        np.save(path, D)
    done = run_test_py("TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
                       "TEST.DATASET_LIST", "rparis6k", "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0",
                       "TEST.SAVE_FEATURES", "True", "SupG.M", "8", "SupG.K", "2", "TEST.TOPK", "20",
                       "SupG.onemeval", "SupG.distractors_path", str(path), "OUT_DIR", str(tmp_path / "out"),
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "out" / "rparis6k.npz")
    ranks, results = full_reference(saved["Q"], saved["X"], D.astype(np.float32), gnds["rparis6k"], 8, 2)
    assert saved["ranks"].shape == (20, 3)
    np.testing.assert_array_equal(saved["ranks"], ranks[:20])
    for key in "EMH":
        assert saved[f"map{key}"] == pytest.approx(results[key]["map"], abs=1e-12, nan_ok=True)
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "distractors: 60 x 2048" in log


def test_onemeval_with_extract_rop1m_output_and_mismatch(workspace, tmp_path):
    import cv2

    from test.data.synthetic import textured_image

    root, _ = workspace
    r1m = tmp_path / "r1m"
    rng = np.random.default_rng(1)
    names = [f"d{i}.jpg" for i in range(5)]
    for name in names:
        (r1m / "jpg").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(r1m / "jpg" / name), textured_image(48, 36, rng, 7))
    (r1m / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    output = tmp_path / "feats.pth"
    extract = subprocess.run([sys.executable, str(ROOT / "extract_rop1m.py"), "--weight", str(root / "weights"),
                              "--depth", "50", "--data-dir", str(r1m), "--output", str(output),
                              "--num-workers", "0", "TEST.SCALE_LIST", "1"],
                             capture_output=True, text=True, timeout=600)
    assert extract.returncode == 0, extract.stderr
    common = ["TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
              "TEST.DATASET_LIST", "roxford5k", "TEST.NUM_WORKERS", "0", "SupG.onemeval",
              "SupG.distractors_path", str(output)]
    same = run_test_py(*common, "TEST.SCALE_LIST", "1", "OUT_DIR", str(tmp_path / "a"), cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert "fingerprint matches" in (tmp_path / "a" / "log.txt").read_text()
    other = run_test_py(*common, "TEST.SCALE_LIST", "3", "OUT_DIR", str(tmp_path / "b"), cwd=tmp_path)
    assert other.returncode == 2 and "scales" in other.stderr and "SupG.distractors_check False" in other.stderr
    assert "Traceback" not in other.stderr


def test_custom_dataset_through_test_py(workspace, tmp_path):
    import cv2

    from test.data.synthetic import textured_image

    root, _ = workspace
    folder = tmp_path / "mydata"
    rng = np.random.default_rng(3)
    for sub, names in (("db", ["a", "b", "c", "d"]), ("queries", ["q1", "q2"])):
        (folder / sub).mkdir(parents=True)
        for i, name in enumerate(names):
            cv2.imwrite(str(folder / sub / f"{name}.jpg"), textured_image(40, 32, rng, i % 2))
    (folder / "gt.csv").write_text("query,bbox,relevant,junk\nqueries/q1.jpg,2 3 30 25,db/a db/c,db/b\n"
                                   "queries/q2.jpg,,db/b db/d,\n")
    done = run_test_py("TEST.WEIGHTS", str(root / "weights"), "TEST.DATASET_LIST", f"custom:{folder}",
                       "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0", "TEST.SAVE_FEATURES", "True",
                       "OUT_DIR", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(next((tmp_path / "out").glob("*.npz")))
    assert saved["Q"].shape == (2, 2048) and saved["X"].shape == (4, 2048)
    ok = [[0, 2], [1, 3]]  # database order: db/a, db/b, db/c, db/d
    junk = [[1], []]
    gnd = [{"ok": np.array(o), "junk": np.array(j)} for o, j in zip(ok, junk)]
    expected = official_compute_map(saved["ranks"], gnd, [1, 5, 10])[0]
    assert saved["mapE"] == pytest.approx(expected)
    assert f"mAP E: {expected * 100:.2f}" in (tmp_path / "out" / "log.txt").read_text()


def test_cvnet_descriptor_matches_its_extractor(workspace, tmp_path):
    from model.checkpoint import load_weights
    from model.cvnet_global import build_cvnet_global
    from test.extraction.cvnet_global_loop import extract_cvnet_global

    root, gnds = workspace
    done = run_test_py("TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
                       "TEST.DATASET_LIST", "roxford5k", "TEST.DESCRIPTOR", "cvnet", "SupG.rerank", "False",
                       "TEST.NUM_WORKERS", "0", "TEST.SAVE_FEATURES", "True", "OUT_DIR", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "log.txt").read_text()
    assert "with CVNet-Global" in log
    config_line = next(line for line in log.splitlines() if line.startswith("config: "))
    assert "descriptor=cvnet" in config_line and "upscale linear" in config_line
    assert not any(f"{flag}=" in config_line for flag in ("gemp", "rgem", "sgem", "relup"))
    backbone = build_cvnet_global(50)
    load_weights(backbone, root / "weights")
    folder = root / "revisitop" / "roxford5k" / "jpg"
    paths = [str(folder / f"{name}.jpg") for name in gnds["roxford5k"]["qimlist"]]
    direct = extract_cvnet_global(backbone, paths, [g["bbx"] for g in gnds["roxford5k"]["gnd"]])
    np.testing.assert_allclose(np.load(tmp_path / "roxford5k.npz")["Q"], direct, rtol=1e-5, atol=1e-6)


def test_gldv2_through_test_py(workspace, tmp_path):
    from test.data.gldv2 import evaluate_gldv2, format_gldv2, load_gldv2
    from test.data.synthetic import write_gldv2

    root, _ = workspace
    write_gldv2(tmp_path / "gld")
    done = run_test_py("TEST.WEIGHTS", str(root / "weights"), "TEST.DATASET_LIST", f"gldv2:{tmp_path / 'gld'}",
                       "TEST.SCALE_LIST", "1", "TEST.NUM_WORKERS", "0", "TEST.SAVE_FEATURES", "True",
                       "SupG.M", "4", "SupG.K", "1", "OUT_DIR", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "out" / "gldv2.npz")
    gld = load_gldv2(tmp_path / "gld")
    assert saved["Q"].shape[0] == len(gld.query_ids) and saved["X"].shape[0] == len(gld.index_ids)
    line = format_gldv2(evaluate_gldv2(saved["ranks"], gld))
    assert line in (tmp_path / "out" / "log.txt").read_text()


def test_lite0_has_no_default_distractor_file(workspace, tmp_path):
    """extract_rop1m.py extracts for the CVNet ResNet only: under SupG.onemeval, Lite0 needs its R1M
    features named, and the run says so instead of looking for an RN{depth} file."""
    root, _ = workspace
    done = run_test_py("MODEL.TYPE", "EFFICIENTNET_LITE0", "TEST.WEIGHTS", "auto", "SupG.onemeval", "True",
                       "TEST.DATA_DIR", str(root / "revisitop"), "TEST.DATASET_LIST", "roxford5k",
                       "OUT_DIR", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "MODEL.TYPE EFFICIENTNET_LITE0" in done.stderr and "SupG.distractors_path" in done.stderr
    assert "RN50" not in done.stderr and done.stderr.count("\n") == 1

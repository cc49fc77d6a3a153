"""Benchmark: a 100-setting reranking sweep (sweep.py) on ROxford-size features against 100 single runs.

    python bench/sweep_speed.py                      # 70 queries x 4993 database x 2048 dims, 100 settings

Builds clustered features for the real ROxford5k ground truth (../shared/data/revisitop/, else a
generated one of the same size): each query's easy, hard and junk images are noisy copies of its
landmark's centre (more noise for hard and junk), the other images form distractor clusters. Then
runs sweep.py with --check-single, which times the sweep, then one ``rerank`` + evaluation per
grid point, checks that every mAP is identical and prints the ratio. Files go to --work-dir.
"""

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REAL_GND = ROOT.parent / "shared" / "data" / "revisitop" / "gnd_roxford5k.pkl"
NOISE = {"query": 0.8, "easy": 1.0, "hard": 1.6, "junk": 1.8, "negative": 1.0}


def generated_gnd(nq=70, n=4993, seed=0):
    """A ground truth of ROxford's size: 14 landmarks of 5 queries, 20-120 images each."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    gnd, used = [], 0
    for landmark in range(nq // 5):
        size = int(rng.integers(20, 120))
        ids = order[used:used + size]
        used += size
        split = np.split(ids, [size // 3, 2 * size // 3])
        for _ in range(5):
            gnd.append({"bbx": [0.0, 0.0, 10.0, 10.0], "easy": split[0].tolist(), "hard": split[1].tolist(),
                        "junk": split[2].tolist()})
    return {"imlist": [f"db{i}" for i in range(n)], "qimlist": [f"q{j}" for j in range(nq)], "gnd": gnd}


def clustered_features(gnd, n, dim, seed=0, n_clusters=300):
    """Q (nq x dim), X (n x dim), float32, L2-normalised, from the ground truth's structure."""
    rng = np.random.default_rng(seed)

    def noisy(centres, sigma):
        v = centres + sigma * rng.standard_normal(centres.shape) / np.sqrt(dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    # queries with the same positives show the same landmark: one centre per distinct set
    keys = [tuple(sorted(g["easy"]) + sorted(g["hard"])) for g in gnd]
    landmark = {key: i for i, key in enumerate(dict.fromkeys(keys))}
    centres = rng.standard_normal((len(landmark), dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    Q = noisy(centres[[landmark[key] for key in keys]], NOISE["query"])
    clusters = rng.standard_normal((n_clusters, dim))
    clusters /= np.linalg.norm(clusters, axis=1, keepdims=True)
    X = noisy(clusters[rng.integers(0, n_clusters, n)], NOISE["negative"])
    for label in ("junk", "hard", "easy"):  # easy last: an image listed twice gets its easiest role
        for g, key in zip(gnd, keys):
            ids = np.asarray(g[label], dtype=np.int64)
            if ids.size:
                X[ids] = noisy(np.repeat(centres[landmark[key]][None], ids.size, 0), NOISE[label])
    return Q.astype(np.float32), X.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--M", default="100,200,400,800")
    parser.add_argument("--K", default="1,3,5,9,15")
    parser.add_argument("--beta", default="0.05,0.1,0.15,0.2,0.3")
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sweep_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if REAL_GND.is_file():
        gnd_path = REAL_GND
        from test.data.gnd import safe_load_pickle

        raw = safe_load_pickle(gnd_path)
    else:
        raw = generated_gnd()
        gnd_path = work / "gnd_generated.pkl"
        gnd_path.write_bytes(pickle.dumps(raw))
    Q, X = clustered_features(raw["gnd"], len(raw["imlist"]), args.dim)
    np.savez(work / "features.npz", Q=Q, X=X)
    print(f"features: {work / 'features.npz'}; ground truth: {gnd_path}", flush=True)
    import sweep

    return sweep.main(["--features", str(work / "features.npz"), "--gnd", str(gnd_path), "--M", args.M,
                       "--K", args.K, "--beta", args.beta, "--out-dir", str(work / "out"), "--check-single"])


if __name__ == "__main__":
    sys.exit(main())

"""docs/vector_db.md: its recipe, run against a real faiss index, gives test.py's reranked ranks."""

import re
from pathlib import Path

import numpy as np
import pytest

from test.data.synthetic import write_revisitop
from tests.entry_points import entry_module, shared_weights

faiss = pytest.importorskip("faiss", reason="needs faiss-cpu (requirements-dev.txt)")

ROOT = Path(__file__).resolve().parents[2]
M = 10  # below the database size (and above SupG.K = 9), so the faiss search really is a top-k


def recipe():
    """The python block of docs/vector_db.md, with the paper's M = 400 replaced by M."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "vector_db.md").read_text(), re.S).group(1)
    assert block.count("M = min(400, index.ntotal)") == 1
    return block.replace("M = min(400, index.ntotal)", f"M = min({M}, index.ntotal)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """test.py on a small revisitop dataset with SupG.M = M (its npz), and the recipe's variables."""
    root = tmp_path_factory.mktemp("vector_db")
    (root / "weights").mkdir()
    checkpoint = shared_weights(tmp_path_factory)
    (root / "weights" / checkpoint.name).symlink_to(checkpoint)
    gnd = write_revisitop(root / "revisitop", "roxford5k", n_db=14, n_query=3, divisor=32, seed=7)
    code = entry_module("test.py").main([
        "TEST.WEIGHTS", str(root / "weights"), "TEST.DATA_DIR", str(root / "revisitop"),
        "TEST.DATASET_LIST", "roxford5k", "OUT_DIR", str(root / "out"), "TEST.NUM_WORKERS", "0",
        "TEST.CACHE", "False", "TEST.SAVE_FEATURES", "True", "DEVICE", "auto", "SupG.M", str(M)])
    assert code == 0
    folder = root / "revisitop" / "roxford5k" / "jpg"
    namespace = {"db_paths": [folder / f"{name}.jpg" for name in gnd["imlist"]],
                 "query_paths": [folder / f"{name}.jpg" for name in gnd["qimlist"]],
                 "query_boxes": [g["bbx"] for g in gnd["gnd"]]}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        exec(compile(recipe(), "docs/vector_db.md", "exec"), namespace)
    return np.load(root / "out" / "roxford5k.npz", allow_pickle=False), namespace


def test_faiss_search_is_test_py_global_ranking(run):
    saved, recipe_run = run
    np.testing.assert_array_equal(recipe_run["X"], saved["X"])
    np.testing.assert_array_equal(recipe_run["Q"], saved["Q"])
    np.testing.assert_array_equal(recipe_run["I"], saved["ranks_global"][:M].T)


def test_reranked_top_is_test_py_ranks(run):
    """Both ways of the recipe, back in faiss' nq x M, are test.py's reranked ranks[:M].T."""
    saved, recipe_run = run
    assert recipe_run["top"].shape == recipe_run["ids"].shape == (3, M)
    np.testing.assert_array_equal(recipe_run["top"], saved["ranks"][:M].T)
    np.testing.assert_array_equal(recipe_run["ids"], saved["ranks"][:M].T)
    assert not np.array_equal(saved["ranks"][:M], saved["ranks_global"][:M])  # reranking moved something
    scores = recipe_run["scores"]
    assert scores.shape == (3, M) and (np.diff(scores, axis=1) <= 0).all()


def test_top_k_below_m_is_refused_not_shortened(run):
    """A faiss top-k with k < M cannot rerank M items: an error naming both fixes."""
    from modules.reranking import ranks_from_topk, rerank

    _, recipe_run = run
    Q, X, index = recipe_run["Q"], recipe_run["X"], recipe_run["index"]
    _, I = index.search(Q, M - 3)
    with pytest.raises(ValueError, match=f"search with k >= M .*pass M={M - 3}"):
        rerank(Q, X, ranks_from_topk(I), M=M)

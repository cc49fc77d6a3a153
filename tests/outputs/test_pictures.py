"""test/outputs/pictures.py: one PNG per query with the expected grid, frames coloured by label, the reranked
row captioned with the reranking's scores, per-query AP in the headings, an index.html that fits."""

import re

import cv2
import numpy as np
import pytest

import test.outputs.pictures as visualize
from modules.reranking import rerank
from test.data.gnd import load_gnd, protocols
from test.data.synthetic import write_revisitop
from test.outputs.pictures import CAPTION, COLOURS, FRAME, MARGIN, TILE, grid_size, write_pictures
from test.retrieval.evaluate import compute_map


def unit_rows(rng, n, d=16):
    a = rng.standard_normal((n, d)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture
def dataset(tmp_path):
    write_revisitop(tmp_path / "data", "roxford5k", n_db=12, n_query=3, divisor=16, seed=0)
    gnd = load_gnd(tmp_path / "data", "roxford5k")
    rng = np.random.default_rng(0)
    Q, X = unit_rows(rng, 3), unit_rows(rng, 12)
    return gnd, Q, X, np.argsort(-(X @ Q.T), axis=0, kind="stable")


@pytest.fixture
def captions(monkeypatch):
    """Every result cell drawn: (row, column, caption), recorded while the real cell is drawn."""
    cells = []
    real = visualize._result_cell

    def record(canvas, top, left, image, caption, colour):
        cells.append(((top - MARGIN) // (TILE + CAPTION + MARGIN), (left - MARGIN) // (TILE + MARGIN) - 1, caption))
        real(canvas, top, left, image, caption, colour)
    monkeypatch.setattr(visualize, "_result_cell", record)
    return cells


def test_labels_have_distinct_colours():
    assert len(set(COLOURS.values())) == len(COLOURS) == 4


def test_pictures_layout_labels_and_index(tmp_path, dataset):
    gnd, Q, X, ranks_global = dataset
    ranks = ranks_global[::-1].copy()  # any other order stands in for the reranked one
    ranks[0, 0] = 12  # an index past the database (an R1M distractor) is drawn as a placeholder
    topk = 5
    folder = write_pictures(tmp_path / "pictures" / "roxford5k", gnd, Q, X, ranks_global, ranks,
                            n_queries=2, topk=topk)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 2 and not [p for p in folder.iterdir() if ".tmp" in p.name]
    index = (folder / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', index)) == {p.name for p in pngs}
    assert "max-width:100%" in index and "<h1>" in index and index.count("<h2>") == 2
    for j, png in enumerate(pngs):
        picture = cv2.imread(str(png))
        assert picture.shape[:2] == grid_size(topk)
        for row, ranking in ((1, ranks_global[:, j]), (2, ranks[:, j])):
            top = MARGIN + row * (TILE + CAPTION + MARGIN)
            for k in range(topk):
                left = MARGIN + (k + 1) * (TILE + MARGIN)
                index_k = int(ranking[k])
                g = gnd.gnd[j]
                if index_k >= gnd.n:
                    expected = COLOURS["negative"]
                elif index_k in g["easy"]:
                    expected = COLOURS["easy"]
                elif index_k in g["hard"]:
                    expected = COLOURS["hard"]
                elif index_k in g["junk"]:
                    expected = COLOURS["junk"]
                else:
                    expected = COLOURS["negative"]
                frame_pixel = picture[top + TILE // 2, left + FRAME // 2]
                assert np.abs(frame_pixel.astype(int) - expected).max() <= 2, (j, row, k)


def test_reranked_row_shows_the_reranking_scores_then_cosines(tmp_path, dataset, captions):
    gnd, Q, X, ranks_global = dataset
    M, K, beta = 4, 2, 0.3
    ranks, scores = rerank(Q, X, ranks_global, M=M, K=K, beta=beta, return_scores=True)
    topk = 6
    write_pictures(tmp_path / "pics", gnd, Q, X, ranks_global, ranks, n_queries=3, topk=topk, reranking=(M, K, beta))
    by_cell = {(j, row, k): c for j in range(3) for (row, k, c) in captions[j * 2 * topk:(j + 1) * 2 * topk]}
    for j in range(3):
        for k in range(topk):
            index = int(ranks[k, j])
            value = f"{scores[k, j]:.3f}" if k < M else f"{X[index] @ Q[j]:.3f} cos"
            assert by_cell[(j, 2, k)] == f"#{k + 1} {value} {visualize.label_of(gnd.gnd[j], index)}"
            g_index = int(ranks_global[k, j])
            assert by_cell[(j, 1, k)].startswith(f"#{k + 1} {X[g_index] @ Q[j]:.3f} ")
        assert all(float(by_cell[(j, 2, k)].split()[1]) >= float(by_cell[(j, 2, k + 1)].split()[1])
                   for k in range(M - 1))  # order and numbers agree


def test_headings_show_per_query_ap_before_and_after(tmp_path, dataset):
    gnd, Q, X, ranks_global = dataset
    ranks = rerank(Q, X, ranks_global, M=6, K=2)
    folder = write_pictures(tmp_path / "pics", gnd, Q, X, ranks_global, ranks, n_queries=3, topk=4,
                            reranking=(6, 2, 0.15))
    headings = re.findall(r"<h2>(.*?)</h2>", (folder / "index.html").read_text())
    assert len(headings) == 3
    for j, heading in enumerate(headings):
        expected = []
        for ranking in (ranks_global, ranks):  # each query alone through the official compute_map
            aps = [compute_map(ranking[:, [j]], [protocols([gnd.gnd[j]])[p][0]])[1][0] for p in "EMH"]
            expected.append("  ".join(f"{p} " + ("-" if np.isnan(v) else f"{100 * v:.2f}") for p, v in zip("EMH", aps)))
        assert heading.endswith(f"AP before reranking {expected[0]}; after {expected[1]}"), heading


def test_top_k_ranks_with_distractors_fall_back_to_cosine_and_na(tmp_path, dataset, captions):
    gnd, Q, X, ranks_global = dataset
    top = ranks_global[:6].copy()
    top[1, :] = 12  # a distractor in every query's top: its features are not here
    folder = write_pictures(tmp_path / "pics", gnd, Q, X, top, top, n_queries=1, topk=3, reranking=(4, 2, 0.15))
    assert "n/a (top-k ranks only)" in (folder / "index.html").read_text()
    assert [c for row, k, c in captions if row == 2] == \
        [f"#1 {X[top[0, 0]] @ Q[0]:.3f} cos {visualize.label_of(gnd.gnd[0], int(top[0, 0]))}", "#2 distractor",
         f"#3 {X[top[2, 0]] @ Q[0]:.3f} cos {visualize.label_of(gnd.gnd[0], int(top[2, 0]))}"]


def test_fewer_queries_than_asked(tmp_path):
    write_revisitop(tmp_path / "data", "rparis6k", n_db=6, n_query=2, divisor=16, seed=1)
    gnd = load_gnd(tmp_path / "data", "rparis6k")
    Q, X = np.eye(2, 4, dtype=np.float32), np.eye(6, 4, dtype=np.float32)
    ranks = np.tile(np.arange(6)[:, None], (1, 2))
    folder = write_pictures(tmp_path / "pics", gnd, Q, X, ranks, ranks, n_queries=10, topk=8)
    assert len(list(folder.glob("*.png"))) == 2
    assert "SupG.rerank is off" in (folder / "index.html").read_text()

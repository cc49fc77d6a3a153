"""test/visualize.py: one PNG per query with the expected grid, frames coloured by label, index.html."""

import re

import cv2
import numpy as np

from test.gnd import load_gnd
from test.visualize import COLOURS, FRAME, MARGIN, TILE, CAPTION, grid_size, write_pictures
from test.synthetic import write_revisitop


def test_pictures_layout_labels_and_index(tmp_path):
    write_revisitop(tmp_path / "data", "roxford5k", n_db=12, n_query=3, divisor=16, seed=0)
    gnd = load_gnd(tmp_path / "data", "roxford5k")
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((3, 16)).astype(np.float32)
    X = rng.standard_normal((12, 16)).astype(np.float32)
    ranks_global = np.argsort(-(X @ Q.T), axis=0, kind="stable")
    ranks = ranks_global[::-1].copy()  # any other order stands in for the reranked one
    ranks[0, 0] = 12  # an index past the database (an R1M distractor) is drawn as a placeholder
    topk = 5
    folder = write_pictures(tmp_path / "pictures" / "roxford5k", gnd, Q, X, ranks_global, ranks,
                            n_queries=2, topk=topk)
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 2
    index = (folder / "index.html").read_text()
    assert set(re.findall(r'src="([^"]+)"', index)) == {p.name for p in pngs}
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


def test_fewer_queries_than_asked(tmp_path):
    write_revisitop(tmp_path / "data", "rparis6k", n_db=6, n_query=2, divisor=16, seed=1)
    gnd = load_gnd(tmp_path / "data", "rparis6k")
    Q, X = np.eye(2, 4, dtype=np.float32), np.eye(6, 4, dtype=np.float32)
    ranks = np.tile(np.arange(6)[:, None], (1, 2))
    folder = write_pictures(tmp_path / "pics", gnd, Q, X, ranks, ranks, n_queries=10, topk=8, reranked=False)
    assert len(list(folder.glob("*.png"))) == 2
    assert "SupG.rerank is off" in (folder / "index.html").read_text()

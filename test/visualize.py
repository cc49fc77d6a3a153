"""Pictures of retrieval results: one PNG per query and an index.html showing them all.

Each PNG is a grid of 3 rows x (1 + k) cells of TILE x TILE pixels plus a caption strip:

    row 0   the query image with its box (yellow), then a legend
    row 1   "global": the top k database images by descriptor similarity
    row 2   "reranked": the top k after SuperGlobal reranking (the same as row 1 with SupG.rerank off)

Every result is framed by its ground-truth label for this query: positive (easy or hard) green,
junk grey, negative red; its caption gives the rank, the cosine similarity to the query and the label.
Indices past the database (R1M distractors under SupG.onemeval) are drawn as a red placeholder.
"""

import html
from pathlib import Path

import cv2
import numpy as np

from errors import UserError

TILE = 160
CAPTION = 20
MARGIN = 8
FRAME = 4
COLOURS = {"easy": (60, 180, 60), "hard": (30, 130, 30), "junk": (150, 150, 150),
           "negative": (40, 40, 220)}  # BGR
BACKGROUND = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def grid_size(topk):
    """(height, width) of a picture with `topk` results per row."""
    return 3 * (TILE + CAPTION + MARGIN) + MARGIN, (topk + 1) * (TILE + MARGIN) + MARGIN


def label_of(gnd_entry, index):
    for name in ("easy", "hard", "junk"):
        if index in set(np.asarray(gnd_entry[name]).tolist()):
            return name
    return "negative"


def fit(image, size=TILE):
    """`image` scaled to fit a size x size tile, centred on white."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    resized = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tile = np.full((size, size, 3), 255, np.uint8)
    y, x = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    tile[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return tile, scale, x, y


def _read(path):
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"cannot read image {path} for the pictures")
    return image


def _text(canvas, text, x, y, colour=(0, 0, 0), scale=0.42):
    cv2.putText(canvas, text, (x, y), FONT, scale, colour, 1, cv2.LINE_AA)


def _result_cell(canvas, top, left, image, caption, colour):
    if image is None:
        tile = np.full((TILE, TILE, 3), 235, np.uint8)
        _text(tile, "distractor", 35, TILE // 2)
    else:
        tile = fit(image)[0]
    canvas[top:top + TILE, left:left + TILE] = tile
    cv2.rectangle(canvas, (left + FRAME // 2, top + FRAME // 2),
                  (left + TILE - 1 - FRAME // 2, top + TILE - 1 - FRAME // 2), colour, FRAME)
    _text(canvas, caption, left + 2, top + TILE + 14)


def draw_query(query_path, bbx, db_paths, gnd_entry, similarity, rows, topk):
    """The picture of one query (uint8 BGR): `rows` = (global ranking, reranked ranking) index lists."""
    height, width = grid_size(topk)
    canvas = np.full((height, width, 3), 255, np.uint8)
    image = _read(query_path)
    tile, scale, x0, y0 = fit(image)
    x1, y1, x2, y2 = (int(round(v * scale)) for v in bbx)
    cv2.rectangle(tile, (x0 + x1, y0 + y1), (x0 + x2 - 1, y0 + y2 - 1), (0, 220, 255), 2)
    canvas[MARGIN:MARGIN + TILE, MARGIN:MARGIN + TILE] = tile
    _text(canvas, "query", MARGIN + 2, MARGIN + TILE + 14)
    left = 2 * MARGIN + TILE
    _text(canvas, Path(query_path).stem, left, MARGIN + 18, scale=0.55)
    legend = [("positive (easy / hard)", COLOURS["easy"]), ("junk (ignored)", COLOURS["junk"]),
              ("negative", COLOURS["negative"])]
    for i, (text, colour) in enumerate(legend):
        y = MARGIN + 40 + 22 * i
        cv2.rectangle(canvas, (left, y - 11), (left + 14, y + 3), colour, -1)
        _text(canvas, text, left + 22, y)
    _text(canvas, "rank  cosine  label; row 2: global ranking, row 3: after reranking", left,
          MARGIN + 40 + 22 * 3 + 4)
    for r, (name, ranking) in enumerate(zip(("global", "reranked"), rows), start=1):
        top = MARGIN + r * (TILE + CAPTION + MARGIN)
        _text(canvas, name, MARGIN + 2, top + TILE // 2, scale=0.6)
        for k, index in enumerate(ranking[:topk]):
            left = MARGIN + (k + 1) * (TILE + MARGIN)
            index = int(index)
            if index < len(db_paths):
                label = label_of(gnd_entry, index)
                caption = f"#{k + 1} {similarity[index]:.3f} {label}"
                _result_cell(canvas, top, left, _read(db_paths[index]), caption, COLOURS[label])
            else:
                _result_cell(canvas, top, left, None, f"#{k + 1} distractor", COLOURS["negative"])
    return canvas


def write_pictures(folder, gnd, Q, X, ranks_global, ranks, n_queries, topk, reranked=True):
    """PNGs for the first `n_queries` queries and an index.html in `folder`; returns the folder.

    `ranks_global` / `ranks` are (positions x nq) in revisitop orientation, before / after reranking;
    Q (nq x D) and X (N x D) give the cosine similarities shown."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write pictures to {folder}: {error.strerror}") from None
    Q, X = np.asarray(Q, np.float32), np.asarray(X, np.float32)
    entries = []
    for j in range(min(n_queries, len(Q))):
        similarity = X @ Q[j]
        rows = (np.asarray(ranks_global)[:topk, j], np.asarray(ranks)[:topk, j])
        picture = draw_query(gnd["query_paths"][j], gnd["gnd"][j]["bbx"], gnd["db_paths"], gnd["gnd"][j],
                             similarity, rows, topk)
        name = f"{j:03d}_{Path(gnd['query_paths'][j]).stem}.png"
        if not cv2.imwrite(str(folder / name), picture):
            raise UserError(f"cannot write {folder / name}")
        entries.append(name)
    note = "" if reranked else " (SupG.rerank is off: both rows show the global ranking)"
    body = "\n".join(f'<h3>{html.escape(n)}</h3>\n<img src="{html.escape(n)}" alt="{html.escape(n)}">'
                     for n in entries)
    (folder / "index.html").write_text(
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(gnd['dataset'])}</title></head>\n"
        f"<body>\n<h2>{html.escape(gnd['dataset'])}: top {topk} before and after reranking{note}</h2>\n"
        "<p>Frames: green = positive, grey = junk, red = negative. Captions: rank, cosine similarity, label.</p>\n"
        f"{body}\n</body></html>\n")
    return folder

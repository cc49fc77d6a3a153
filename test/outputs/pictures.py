"""Pictures of retrieval results: one PNG per query and an index.html showing them all.

Each PNG is a grid of 3 rows x (1 + k) cells of TILE x TILE pixels plus a caption strip:

    row 0   the query image with its box (yellow), its name, its AP before and after reranking
            (Easy / Medium / Hard protocols), what the captions mean, and the legend
    row 1   "global": the top k database images by descriptor similarity; caption: rank, cosine
    row 2   "reranked": the top k after SuperGlobal reranking, captioned with the score the
            reranking sorted by, (S1 + S2) / 2, so order and numbers agree; beyond the top M, or
            with reranking off (then the row repeats row 1), the cosine

Every result is framed by its ground-truth label for this query: easy green, hard blue, junk grey,
negative red. Indices past the database (R1M distractors under SupG.onemeval) are drawn as a red
placeholder. Every file is written atomically.
"""

import html
import math
from pathlib import Path

import cv2
import numpy as np

from errors import UserError
from test.data.images import read_image

TILE = 160
CAPTION = 20
MARGIN = 8
FRAME = 4
MIN_WIDTH = 1040        # room for the heading and legend beside the query even with few results
COLOURS = {"easy": (40, 170, 40), "hard": (220, 120, 0), "junk": (150, 150, 150),
           "negative": (40, 40, 220)}  # BGR: green, blue, grey, red
QUERY_BOX = (0, 220, 255)  # yellow
LEGEND = [("easy positive", COLOURS["easy"]), ("hard positive", COLOURS["hard"]),
          ("junk (ignored by the metric)", COLOURS["junk"]), ("negative", COLOURS["negative"]),
          ("query box: the region the query descriptor is computed from", QUERY_BOX)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def grid_size(topk):
    """(height, width) of a picture with `topk` results per row."""
    return 3 * (TILE + CAPTION + MARGIN) + MARGIN, max(MIN_WIDTH, (topk + 1) * (TILE + MARGIN) + MARGIN)


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


def ap_text(aps):
    """'E 83.10  M 70.20  H 55.00' from per-protocol APs (fractions; NaN: no positive, '-')."""
    if aps is None:
        return "n/a (top-k ranks only)"
    return "  ".join(f"{p} " + ("-" if not math.isfinite(v) else f"{100 * v:.2f}") for p, v in zip("EMH", aps))


def draw_query(query_path, bbx, db_paths, gnd_entry, similarity, rows, topk, scores=None, aps=(None, None),
               reranked=True):
    """The picture of one query (uint8 BGR): `rows` = (global ranking, reranked ranking) index lists;
    `scores`: the reranked scores of the reranked row's first positions (None: cosine throughout);
    `aps`: its (E, M, H) APs (before, after) reranking."""
    height, width = grid_size(topk)
    canvas = np.full((height, width, 3), 255, np.uint8)
    image = read_image(query_path)
    tile, scale, x0, y0 = fit(image)
    x1, y1, x2, y2 = (int(round(v * scale)) for v in bbx)
    cv2.rectangle(tile, (x0 + x1, y0 + y1), (x0 + x2 - 1, y0 + y2 - 1), QUERY_BOX, 2)
    canvas[MARGIN:MARGIN + TILE, MARGIN:MARGIN + TILE] = tile
    _text(canvas, "query", MARGIN + 2, MARGIN + TILE + 14)
    left = 2 * MARGIN + TILE
    _text(canvas, Path(query_path).stem, left, MARGIN + 20, scale=0.6)
    if reranked:
        _text(canvas, f"AP before reranking:  {ap_text(aps[0])}", left, MARGIN + 48, scale=0.5)
        _text(canvas, f"AP after reranking:   {ap_text(aps[1])}", left, MARGIN + 70, scale=0.5)
    else:
        _text(canvas, f"AP (reranking off):  {ap_text(aps[0])}", left, MARGIN + 48, scale=0.5)
    _text(canvas, "row 2, global ranking: rank, cosine, label", left, MARGIN + 100)
    _text(canvas, "row 3, after reranking: rank, score (S1+S2)/2, label" if reranked
          else "row 3: the global ranking again", left, MARGIN + 118)
    if reranked:
        _text(canvas, "(beyond the reranked top M: the cosine, marked 'cos')", left, MARGIN + 136)
    legend_left = left + 440
    for i, (text, colour) in enumerate(LEGEND):
        y = MARGIN + 24 + 22 * i
        if colour == QUERY_BOX:
            cv2.rectangle(canvas, (legend_left, y - 11), (legend_left + 14, y + 3), colour, 2)
        else:
            cv2.rectangle(canvas, (legend_left, y - 11), (legend_left + 14, y + 3), colour, -1)
        _text(canvas, text, legend_left + 22, y)
    for r, (name, ranking) in enumerate(zip(("global", "reranked"), rows), start=1):
        top = MARGIN + r * (TILE + CAPTION + MARGIN)
        _text(canvas, name, MARGIN + 2, top + TILE // 2, scale=0.6)
        for k, index in enumerate(ranking[:topk]):
            left = MARGIN + (k + 1) * (TILE + MARGIN)
            index = int(index)
            if index < len(db_paths):
                label = label_of(gnd_entry, index)
                if r == 2 and scores is not None and k < len(scores):
                    value = f"{scores[k]:.3f}"
                else:
                    value = f"{similarity[index]:.3f}" + (" cos" if r == 2 and reranked else "")
                _result_cell(canvas, top, left, read_image(db_paths[index]), f"#{k + 1} {value} {label}",
                             COLOURS[label])
            else:
                _result_cell(canvas, top, left, None, f"#{k + 1} distractor", COLOURS["negative"])
    return canvas


def reranked_scores(Q, X, ranks_global, ranks, cols, reranking):
    """(S1 + S2) / 2 of the queries `cols`' reranked top m (m x len(cols)), recomputed from the
    global ranking with ``reranking`` = (M, K, beta); None when reranking is off, when the top holds
    R1M distractors (their features are not here), or if the result differs from ``ranks``."""
    from modules.reranking import rerank

    if reranking is None or not len(cols):
        return None
    M, K, beta = reranking
    top = np.asarray(ranks_global)[:, cols]
    m = min(M, top.shape[0])
    if top[:m].size and top[:m].max() >= len(X):
        return None
    new, scores = rerank(Q[cols], X, top, M=M, K=K, beta=beta, return_scores=True, columns_are_queries=True)
    return scores if np.array_equal(new[:m], np.asarray(ranks)[:m, cols]) else None


def query_aps(ranks, gnd_entries, n_db):
    """Per query (E, M, H) APs (n x 3) of a full ranking, with test/retrieval/evaluate.py; None when the ranks
    are a top-k only (SupG.onemeval): APs need every position."""
    from test.data.gnd import protocols
    from test.retrieval.evaluate import evaluate_revisitop

    ranks = np.asarray(ranks)
    if ranks.shape[0] != n_db or not len(gnd_entries):
        return None
    results = evaluate_revisitop(ranks, protocols(list(gnd_entries)))
    return np.stack([results[p]["aps"] for p in "EMH"], axis=1)


def write_pictures(folder, gnd, Q, X, ranks_global, ranks, n_queries, topk, reranking=None, queries=None, aps=None):
    """PNGs of some queries and an index.html in `folder`; returns the folder.

    `queries`: the query indices to draw, in that order (None: the first `n_queries`).
    `ranks_global` / `ranks` are (positions x nq) in revisitop orientation, before / after reranking;
    Q (nq x D) and X (N x D) give the cosine similarities shown. `reranking`: (M, K, beta) of the
    run, None when reranking was off; the reranked scores shown are recomputed with it for the
    drawn queries (and must give the same ranks). `aps`: the run's (E, M, H) APs before and after
    reranking, two (nq x 3) arrays (None: computed here from the ranks when they are full)."""
    from test.outputs.writer import atomic_write

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write pictures to {folder}: {error.strerror}") from None
    Q, X = np.asarray(Q, np.float32), np.asarray(X, np.float32)
    topk = max(1, min(topk, np.asarray(ranks).shape[0]))  # a row never shows more than the ranking holds
    cols = list(range(min(n_queries, len(Q)))) if queries is None else [int(q) for q in queries]
    scores = reranked_scores(Q, X, ranks_global, ranks, cols, reranking)
    if aps is None:
        entries = [gnd["gnd"][j] for j in cols]
        aps = tuple(query_aps(np.asarray(r)[:, cols], entries, len(gnd["db_paths"])) for r in (ranks_global, ranks))
    else:
        aps = tuple(np.asarray(a)[cols] for a in aps)
    sections = []
    for i, j in enumerate(cols):
        rows = (np.asarray(ranks_global)[:topk, j], np.asarray(ranks)[:topk, j])
        query_ap = tuple(None if a is None else a[i] for a in aps)
        picture = draw_query(gnd["query_paths"][j], gnd["gnd"][j]["bbx"], gnd["db_paths"], gnd["gnd"][j],
                             X @ Q[j], rows, topk, None if scores is None else scores[:, i], query_ap,
                             reranked=reranking is not None)
        name = f"{j:03d}_{Path(gnd['query_paths'][j]).stem}.png"
        ok, png = cv2.imencode(".png", picture)
        if not ok:
            raise UserError(f"cannot encode {folder / name}")
        atomic_write(folder / name, png.tobytes())
        ap = (f"AP before reranking {ap_text(query_ap[0])}; after {ap_text(query_ap[1])}" if reranking
              else f"AP {ap_text(query_ap[0])}")
        sections.append(f"<h2>{j}: {html.escape(Path(gnd['query_paths'][j]).stem)} &mdash; {html.escape(ap)}</h2>\n"
                        f'<img src="{html.escape(name)}" alt="{html.escape(name)}">')
    atomic_write(folder / "index.html", index_html(gnd["dataset"], topk, sections, reranking).encode())
    return folder


def index_html(dataset, topk, sections, reranking):
    note = (f" (reranking M={reranking[0]}, K={reranking[1]}, beta={reranking[2]:g})" if reranking
            else " (SupG.rerank is off: both rows show the global ranking)")
    swatch = "".join(f'<span style="border:4px solid rgb{tuple(reversed(c))};padding:0 6px;margin-right:8px">'
                     f'{html.escape(t)}</span>' for t, c in LEGEND)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(dataset)}</title>\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<style>body{font-family:sans-serif;margin:1em;line-height:1.4}"
            "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}"
            "img{max-width:100%;height:auto;display:block;border:1px solid #ccc}</style></head>\n"
            f"<body>\n<h1>{html.escape(dataset)}: top {topk} before and after reranking{html.escape(note)}</h1>\n"
            "<p>Row 2: the global ranking, captioned rank, cosine similarity, label. Row 3: after reranking, "
            "captioned with the score the reranking sorted by, (S1+S2)/2 (beyond the reranked top M: the "
            "cosine, marked 'cos'). Headings: each query's AP for the Easy, Medium and Hard protocols, "
            f"before and after reranking (in %).</p>\n<p>{swatch}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")

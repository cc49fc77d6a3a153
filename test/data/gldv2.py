"""Google Landmarks v2 retrieval: dataset layout, images, and the challenge's mAP@100, as specified in
docs/gldv2.md (layout, solution file, metric, small-image upscaling).

An id listed twice (in the solution, index.csv, test.csv, or as two image files) is refused: the
last row would silently win, or the image would count twice. Images whose shorter side is below
``MIN_SIDE`` are upscaled first: at the smallest SuperGlobal scale that leaves a 3x3 conv5 map, the
smallest on which Regional-GeM's reflection padding (the official path) works.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from errors import UserError, readable_file
from test.data.images import read_image, to_chw
from test.outputs.writer import atomic_write

SOLUTION_NAME = "retrieval_solution_v2.1.csv"
USAGES = ("Public", "Private")
ALL_USAGES = USAGES + ("Ignored",)
MIN_SIDE = 96
MAX_PREDICTIONS = 100


def check_id(image_id: str, where: str) -> str:
    """`image_id` when it can name an image under the folder scheme (at least three characters, the
    first three name folders; no path separator); UserError naming `where` otherwise."""
    if len(image_id) < 3 or "/" in image_id or "\\" in image_id or "\0" in image_id or ".." in image_id:
        raise UserError(f"{where}: id {image_id!r} cannot name a GLDv2 image: ids have at least three characters "
                        "(the images lie under <split>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg) and no path separator; "
                        "fix the id")
    return image_id


def image_path(root, split, image_id) -> Path:
    """``<root>/<split>/<id[0]>/<id[1]>/<id[2]>/<id>.jpg``."""
    return Path(root) / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def read_csv_rows(path, required, example) -> list[dict]:
    """The rows of a GLDv2 CSV as dicts, after checking the whole file: UTF-8 text, a header with the
    `required` columns, every row as long as the header. UserError naming the file (and the line)."""
    return [row for _, row in read_csv_lines(path, required, example)]


def read_csv_lines(path, required, example) -> list[tuple[int, dict]]:
    """``read_csv_rows`` with the line number (of the row's last line) before each row."""
    readable_file(path)
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")  # decoded whole: the byte offset is the file's
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}): "
                        f"expected a CSV with header {example}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in header]
        if missing:
            found = f"header {','.join(header)}" if header else "an empty file"
            raise UserError(f"{path} lacks column(s) {missing}: expected a header line {example}, found {found}")
        rows = []
        for fields in reader:
            if not fields:
                continue  # a blank line
            if any("\0" in field for field in fields):  # Python's csv accepts NUL bytes since 3.11
                raise UserError(f"{path} line {reader.line_num} holds a NUL byte: not a text CSV")
            if len(fields) != len(header):
                raise UserError(f"{path} line {reader.line_num}: {len(fields)} fields but the header has "
                                f"{len(header)} ({','.join(header)}); quote fields that contain commas")
            rows.append((reader.line_num, dict(zip(header, fields))))
    except csv.Error as error:  # e.g. a field over csv.field_size_limit()
        raise UserError(f"{path} line {reader.line_num} is not readable CSV ({error})") from None
    return rows


def read_ids(root, split) -> list[str]:
    """Ids of a split: the 'id' column of <root>/<split>.csv, else the .jpg files under <root>/<split>/."""
    listing = Path(root) / f"{split}.csv"
    if readable_file(listing).is_file():
        ids, line_of = [], {}
        for line, row in read_csv_lines(listing, ["id"], "id[,...]"):
            image_id = row["id"].strip()
            if not image_id:
                continue
            if image_id in line_of:
                raise UserError(f"{listing} line {line}: id {image_id} is listed twice (also line "
                                f"{line_of[image_id]}): list each image once")
            line_of[image_id] = line
            ids.append(image_id)
        if not ids:
            raise UserError(f"{listing} lists no ids: fill its 'id' column or remove it to use the images found "
                            f"under {Path(root) / split}/")
        return ids
    folder = Path(root) / split
    if not folder.is_dir():
        raise UserError(f"GLDv2 {split} images not found: neither {listing} nor {folder}/ exists")
    found = {}
    for path in sorted(folder.rglob("*.jpg")):
        if path.stem in found:
            raise UserError(f"GLDv2 {split} image id {path.stem} has two files, {found[path.stem]} and {path}: "
                            f"keep the one at {image_path(root, split, path.stem)}")
        found[path.stem] = path
    return sorted(found)


def read_solution(path) -> dict[str, tuple[list[str], str]]:
    """``{test id: (relevant index ids, usage)}`` from retrieval_solution_v2.1.csv."""
    path = readable_file(Path(path))
    if not path.is_file():
        raise UserError(f"GLDv2 solution file not found: {path}")
    solution, line_of = {}, {}
    for line, row in read_csv_lines(path, ["id", "images", "Usage"], "id,images,Usage"):
        test_id, usage = row["id"].strip(), row["Usage"].strip()
        if usage not in ALL_USAGES:
            raise UserError(f"{path} line {line}: id {test_id} has Usage {row['Usage']!r}: expected exactly "
                            f"Public, Private or Ignored (case matters)")
        if test_id in line_of:
            raise UserError(f"{path} line {line}: test id {test_id} is listed twice (also line "
                            f"{line_of[test_id]}): keep one row per test id")
        line_of[test_id] = line
        images = [] if row["images"].strip() in ("", "None") else row["images"].split()
        if usage in USAGES and not images:
            raise UserError(f"{path}: {usage} query {test_id} has no relevant images")
        solution[test_id] = (images, usage)
    return solution


@dataclass(frozen=True)
class GLDv2:
    """Scored queries and the index, with relevant sets as positions into ``index_ids``."""

    root: Path
    index_ids: list[str]
    query_ids: list[str]
    usage: list[str]
    relevant: list[np.ndarray]
    index_paths: list[str]
    query_paths: list[str]


def load_gldv2(root, solution=None) -> GLDv2:
    """The GLDv2 retrieval set under ``root``; ``solution`` defaults to <root>/retrieval_solution_v2.1.csv."""
    root = Path(root)
    sol = read_solution(solution if solution is not None else root / SOLUTION_NAME)
    index_ids, test_ids = read_ids(root, "index"), read_ids(root, "test")
    for split, ids in (("index", index_ids), ("test", test_ids)):  # values once every file has its shape
        for image_id in ids:
            check_id(image_id, f"GLDv2 {split} ids of {root} ({split}.csv or {split}/)")
    position = {image_id: i for i, image_id in enumerate(index_ids)}
    query_ids, usage, relevant = [], [], []
    for test_id in test_ids:
        images, use = sol.get(test_id, ([], "Ignored"))
        if use not in USAGES:
            continue
        missing = [i for i in images if i not in position]
        if missing:
            raise UserError(f"GLDv2 query {test_id}: relevant index image {missing[0]} is not in the index "
                            f"({len(missing)} missing); the index list is incomplete")
        query_ids.append(test_id)
        usage.append(use)
        relevant.append(np.array(sorted({position[i] for i in images}), dtype=np.int64))
    if not query_ids:
        raise UserError(f"no scored GLDv2 queries: no test id of {root} is Public or Private in the solution")
    return GLDv2(root=root, index_ids=index_ids, query_ids=query_ids, usage=usage, relevant=relevant,
                 index_paths=[str(image_path(root, "index", i)) for i in index_ids],
                 query_paths=[str(image_path(root, "test", i)) for i in query_ids])


def average_precision_at_k(predicted, relevant, k=MAX_PREDICTIONS) -> float:
    """The challenge's AP@k of one query: predicted ids/positions (best first), relevant set."""
    relevant = set(int(r) for r in relevant) if not isinstance(relevant, set) else relevant
    if not relevant:
        raise ValueError("a scored query needs at least one relevant image")
    seen, hits, ap = set(), 0, 0.0
    for i, p in enumerate(list(predicted)[:k]):
        p = int(p)
        if p in seen:
            continue
        seen.add(p)
        if p in relevant:
            hits += 1
            ap += hits / (i + 1)
    return ap / min(len(relevant), k)


def evaluate_gldv2(ranks, gld: GLDv2, k=MAX_PREDICTIONS) -> dict:
    """mAP@k for Public, Private and All. ``ranks``: (N' x nq) index positions, column j for query j."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gld.query_ids):
        raise ValueError(f"ranks must be N' x {len(gld.query_ids)} (one column per scored query), "
                         f"got {ranks.shape}")
    aps = np.array([average_precision_at_k(ranks[:k, j], gld.relevant[j], k) for j in range(ranks.shape[1])])
    usage = np.array(gld.usage)
    results = {"aps": aps}
    for name, mask in (("Public", usage == "Public"), ("Private", usage == "Private"),
                       ("All", np.ones(len(usage), dtype=bool))):
        results[name] = float(aps[mask].mean()) if mask.any() else float("nan")
    return results


def format_gldv2(results, k=MAX_PREDICTIONS) -> str:
    """``GLDv2 retrieval mAP@100: Public 12.34, Private 13.45, All 12.90``; a split without queries
    (its mean is NaN) reads ``n/a (no queries)``, never ``nan``."""
    values = ", ".join(f"{name} {results[name] * 100:.2f}" if np.isfinite(results[name])
                       else f"{name} n/a (no queries)" for name in ("Public", "Private", "All"))
    return f"GLDv2 retrieval mAP@{k}: {values}"


def write_submission(path, gld: GLDv2, ranks, k=MAX_PREDICTIONS) -> None:
    """Kaggle-style ``id,images`` CSV of the top k index ids per scored query."""
    ranks = np.asarray(ranks)
    rows = [f"{test_id},{' '.join(gld.index_ids[int(i)] for i in ranks[:k, j])}\n"
            for j, test_id in enumerate(gld.query_ids)]
    atomic_write(path, ("id,images\n" + "".join(rows)).encode())


def upscale_small(im: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """Upscale (INTER_LINEAR, aspect kept) so the shorter side is exactly ``min_side``; else unchanged."""
    height, width = im.shape[:2]
    short = min(height, width)
    if short >= min_side:
        return im
    factor = min_side / short
    if height <= width:
        size = (max(min_side, int(round(width * factor))), min_side)
    else:
        size = (min_side, max(min_side, int(round(height * factor))))
    return cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)


class GLDv2Images(Dataset):
    """``ds[i] = (i, CHW uint8 tensor)`` like test.data.images.RevisitopImages, small images upscaled."""

    def __init__(self, paths, min_side: int = MIN_SIDE):
        self.paths = [os.fspath(p) for p in paths]
        self.min_side = int(min_side)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return index, to_chw(upscale_small(read_image(self.paths[index]), self.min_side))

"""Custom datasets: a folder of images plus a small ground-truth file (CSV or JSON, specified in
docs/custom_data.md), as a revisitop-style ``Gnd``.

Mapping to revisitop: relevant -> ``easy``, hard -> ``hard``, junk -> ``junk``; so the Easy
protocol scores relevant only (hard counts as junk), Medium scores relevant + hard, Hard scores hard
only. A query's own image found in the database, and not one of its relevant/hard images, is added
to that query's junk (finding itself neither helps nor hurts).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shlex
from pathlib import Path

import numpy as np

from errors import UserError, readable_file
from test.data.gnd import Gnd
from test.data.images import read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
GT_NAMES = ("gt.csv", "gt.json", "ground_truth.csv", "ground_truth.json")
LIST_KEYS = ("relevant", "junk", "hard")


def find_gt_file(folder) -> Path:
    """The ground-truth file in ``folder`` when none is named: the one of GT_NAMES present. Two or
    more present is a UserError (which one is meant is not ours to guess)."""
    found = [Path(folder) / name for name in GT_NAMES if os.path.lexists(Path(folder) / name)]
    if len(found) > 1:
        raise UserError(f"several ground-truth files in {folder}: {', '.join(str(p) for p in found)}: keep one, "
                        f"or name it with custom:{folder}::<file>")
    if found:
        return found[0]
    raise UserError(f"no ground-truth file in {folder}: expected one of {', '.join(GT_NAMES)} "
                    "(see docs/custom_data.md)")


def list_images(folder) -> list[str]:
    """Relative '/'-separated paths of every image under ``folder``, sorted."""
    folder = Path(folder)
    names = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                names.append((Path(dirpath) / name).relative_to(folder).as_posix())
    return sorted(names)


class _Cell(str):
    """The text of a CSV cell (or a JSON string) listing image names, split once the folder's
    images are known (`_names_in_cell`)."""


def _split_names(text) -> _Cell:
    return _Cell((text or "").strip())


MAX_WORDS_PER_NAME = 8


def _names_in_cell(text, names, where, what) -> list[str]:
    """Image names of one cell, separated by spaces. A name holding spaces is written in double
    quotes inside the cell (`"my photo.jpg" b.jpg`), or is found as the longest run of up to
    MAX_WORDS_PER_NAME words that names an image of the folder (`my photo.jpg b.jpg`)."""
    if '"' in text:
        lexer = shlex.shlex(text, posix=True)
        lexer.whitespace_split, lexer.quotes, lexer.escape = True, '"', ""
        try:
            return list(lexer)
        except ValueError:
            raise UserError(f"{where}: {what}s {text!r}: a double quote is not closed") from None
    words, out, i = text.split(), [], 0
    while i < len(words):
        for j in range(min(len(words), i + MAX_WORDS_PER_NAME), i, -1):
            candidate = " ".join(words[i:j])
            if j == i + 1 or names.resolve(candidate, where, what) is not None:
                break
        out.append(candidate)
        i = j
    return out


def _parse_box(value, where):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,;]+", value.strip()) if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"{where}: bbox {value!r} must be 4 numbers x1 y1 x2 y2") from None
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise UserError(f"{where}: bbox {value!r} must be 4 numbers x1 y1 x2 y2")
    try:
        box = tuple(float(v) for v in value)
    except OverflowError:  # an integer too large for a float
        raise UserError(f"{where}: bbox has a coordinate beyond the float range") from None
    if not all(math.isfinite(v) for v in box):
        raise UserError(f"{where}: bbox {list(box)} has a non-finite coordinate")
    x1, y1, x2, y2 = (int(v) for v in box)
    if min(x1, y1, x2, y2) < 0 or x2 <= x1 or y2 <= y1:
        raise UserError(f"{where}: bbox {list(box)} must have 0 <= x1 < x2 and 0 <= y1 < y2 (after int())")
    return box


def _read_csv(path):
    readable_file(path, " (ground truth)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            fields = [f.strip().lower() for f in (rows and rows[0].keys() or [])]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read ground-truth CSV {path}: {error}") from None
    if not rows:
        raise UserError(f"ground-truth CSV {path} has no query rows (header: query,bbox,relevant,junk,hard)")
    if "query" not in fields or "relevant" not in fields:
        raise UserError(f"ground-truth CSV {path} needs the columns query and relevant "
                        f"(optional: bbox, junk, hard); found {fields}")
    queries = []
    for i, row in enumerate(rows):
        row = {(k or "").strip().lower(): (v or "") if not isinstance(v, list) else " ".join(v)
               for k, v in row.items()}
        where = f"{path} row {i + 2}"
        entry = {"query": row["query"].strip(), "bbox": row.get("bbox", ""), "where": where}
        for key in LIST_KEYS:
            entry[key] = _split_names(row.get(key, ""))
        queries.append(entry)
    return None, queries


def _read_json(path):
    readable_file(path, " (ground truth)")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: JSONDecodeError, UnicodeDecodeError, a 5000-digit int
        raise UserError(f"cannot read ground-truth JSON {path}: {' '.join(str(error).split())[:200]}") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise UserError(f"cannot read ground-truth JSON {path}: nested too deeply to be a ground truth "
                        "(see docs/custom_data.md)") from None
    database = None
    if isinstance(data, dict):
        database, data = data.get("database"), data.get("queries")
        if database is not None and (not isinstance(database, list)
                                     or not all(isinstance(n, str) for n in database)):
            raise UserError(f"{path}: 'database' must be a list of image names")
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty list of queries (or {{'queries': [...]}})")
    queries = []
    for i, item in enumerate(data):
        where = f"{path} query {i}"
        if not isinstance(item, dict) or not isinstance(item.get("query"), str):
            raise UserError(f"{where}: each query must be an object with a 'query' image name")
        if "relevant" not in item and "easy" not in item:
            raise UserError(f"{where}: missing 'relevant' (a list of image names, may be empty)")
        entry = {"query": item["query"].strip(), "bbox": item.get("bbox"), "where": where}
        for key in LIST_KEYS:
            value = item.get(key, item.get("easy") if key == "relevant" else None) or []
            if isinstance(value, str):
                entry[key] = _split_names(value)
                continue
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                raise UserError(f"{where}: '{key}' must be a list of image names")
            entry[key] = [n.strip() for n in value if n.strip()]
        queries.append(entry)
    return database, queries


class _Names:
    """Resolves a name (relative path, extension optional when unique) to a canonical name."""

    def __init__(self, names):
        self.exact = set(names)
        self.stems = {}
        for name in names:
            self.stems.setdefault(os.path.splitext(name)[0], []).append(name)

    def resolve(self, name, where, what):
        name = name.replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        if name in self.exact:
            return name
        found = self.stems.get(name, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{where}: {what} {name!r} is ambiguous ({', '.join(found)}); add the extension")
        return None


def load_custom_dataset(folder, gt_file=None, name=None) -> Gnd:
    """Load ``folder`` + its ground truth (CSV or JSON, see the module docstring) as a ``Gnd``.

    ``gt_file`` defaults to the one of gt.csv, gt.json, ground_truth.csv, ground_truth.json in the
    folder (two or more of them there is a UserError: name the file). ``name`` (the dataset name used
    in logs and saved files) defaults to the folder name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"custom dataset folder not found: {folder}")
    path = Path(gt_file) if gt_file is not None else find_gt_file(folder)
    if not readable_file(path, " (ground truth)").is_file():
        raise UserError(f"ground-truth file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UserError(f"ground-truth file {path}: use a .csv or .json file (see docs/custom_data.md)")
    database, queries = _read_csv(path) if suffix == ".csv" else _read_json(path)

    on_disk = list_images(folder)
    disk_names = _Names(on_disk)

    def resolve_any(n, where, what):
        found = disk_names.resolve(n, where, what)
        if found is None:
            raise UserError(f"{where}: {what} {n!r} is not an image in {folder}")
        return found

    for q in queries:
        q["query"] = resolve_any(q["query"], q["where"], "query image")
        for key in LIST_KEYS:
            if isinstance(q[key], _Cell):
                q[key] = _names_in_cell(q[key], disk_names, q["where"], f"{key} image")
            q[key] = [resolve_any(n, q["where"], f"{key} image") for n in q[key]]
    if database is not None:
        imlist = [resolve_any(n, f"{path} database", "image") for n in database]
        if len(set(imlist)) != len(imlist):
            raise UserError(f"{path}: 'database' lists an image twice")
    else:
        listed = {n for q in queries for key in LIST_KEYS for n in q[key]}
        query_only = {q["query"] for q in queries} - listed
        imlist = [n for n in on_disk if n not in query_only]
    if not imlist:
        raise UserError(f"custom dataset {folder} has no database images")
    index = {n: i for i, n in enumerate(imlist)}

    gnd, own_positive = [], []
    for q in queries:
        lists = {}
        for key in LIST_KEYS:
            missing = [n for n in q[key] if n not in index]
            if missing:
                raise UserError(f"{q['where']}: {key} image {missing[0]!r} is not in the database")
            lists[key] = list(dict.fromkeys(index[n] for n in q[key]))
        both = (set(lists["relevant"]) & set(lists["hard"])) | \
               ((set(lists["relevant"]) | set(lists["hard"])) & set(lists["junk"]))
        if both:
            raise UserError(f"{q['where']}: image {imlist[min(both)]!r} is listed in two of relevant/hard/junk")
        own = index.get(q["query"])
        if own is not None and (own in lists["relevant"] or own in lists["hard"]):
            own_positive.append(q["where"])
        if own is not None and own not in lists["relevant"] and own not in lists["hard"] \
                and own not in lists["junk"]:
            lists["junk"].append(own)
        box = _parse_box(q["bbox"], q["where"])
        if box is None:
            image = read_image(folder / q["query"])  # the loader's reader: its checks and messages
            box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
        gnd.append({"bbx": box, "easy": np.asarray(lists["relevant"], dtype=np.int64),
                    "hard": np.asarray(lists["hard"], dtype=np.int64),
                    "junk": np.asarray(lists["junk"], dtype=np.int64)})
    if own_positive:  # the query finds itself at rank 1: the mAP is higher than the task's
        print(f"warning: {len(own_positive)} of {len(queries)} queries of {path} list their own image as a "
              f"positive (first: {own_positive[0]}): each finds itself at rank 1, which raises the mAP; list it "
              "as junk or leave it out", flush=True)
    qimlist = [q["query"] for q in queries]
    return Gnd(dataset=name or folder.resolve().name, gnd_path=path, image_dir=folder, imlist=imlist,
               qimlist=qimlist, gnd=gnd, db_paths=[str(folder / n) for n in imlist],
               query_paths=[str(folder / n) for n in qimlist])


def load_dataset_entry(data_dir, entry: str) -> Gnd:
    """One ``TEST.DATASET_LIST`` entry: ``custom:<folder>`` or ``custom:<folder>::<gt file>`` (a custom
    dataset; a relative folder is taken relative to the working directory), else a revisitop name
    loaded with test.data.gnd.load_gnd(data_dir, entry)."""
    if entry.startswith("custom:"):
        folder, _, gt_file = entry[len("custom:"):].partition("::")
        if not folder:
            raise UserError(f"dataset {entry!r}: expected custom:<folder> or custom:<folder>::<gt file>")
        return load_custom_dataset(folder, gt_file or None)
    from test.data.gnd import load_gnd

    return load_gnd(data_dir, entry)

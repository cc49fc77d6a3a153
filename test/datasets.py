"""One interface over every kind of retrieval benchmark test.py runs (in the spirit of faiss's
contrib/datasets.py): revisitop names (roxford5k, rparis6k), ``custom:<folder>`` and ``gldv2:<root>``.

A dataset gives its query and database splits (image paths, query boxes and a torch Dataset that
decodes them), says how many rank positions it needs (all, or the top k), evaluates ranks,
formats the result lines for log.txt and names the arrays to save. test.py runs one flow over it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from errors import UserError
from test.data.custom import load_dataset_entry
from test.data.gldv2 import MAX_PREDICTIONS, GLDv2Images, evaluate_gldv2, format_gldv2, load_gldv2
from test.data.gnd import Gnd, protocols
from test.data.images import RevisitopImages, require_images
from test.outputs.per_query import PerQuery, gldv2_table, revisitop_table
from test.outputs.writer import register_input
from test.retrieval.evaluate import evaluate_revisitop, format_results


@dataclass(frozen=True)
class Split:
    """One side of a benchmark: ``label`` names it in messages (``roxford5k queries``)."""

    label: str
    paths: list
    bboxes: list | None
    images: Dataset


def _short_hash(path) -> str:
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]


class RetrievalDataset:
    """What test.py needs of a benchmark. Subclasses fill the attributes and the three methods."""

    name: str            # in the log: ">> {name}: Global Retrieval ..."
    output_name: str     # file stem of its outputs (npz, pictures, cache entries): unique per dataset
    queries: Split
    database: Split
    top_k: int | None = None          # None: rank the whole database; else keep the top k per query
    supports_distractors = False      # SupG.onemeval (R1M) is defined for revisitop-style ground truth
    supports_cvnet = False            # TEST.DESCRIPTOR cvnet
    gnd: Gnd | None = None            # revisitop-style ground truth (pictures, 1M evaluation)

    def evaluate(self, ranks: np.ndarray) -> dict:
        raise NotImplementedError

    def format(self, results: dict) -> list[str]:
        raise NotImplementedError

    def arrays(self, results: dict) -> dict:
        """The scores to save next to Q, X and the ranks."""
        raise NotImplementedError

    def per_query(self, before: dict, after: dict) -> PerQuery:
        """Each query's name and AP from the results of the global and of the final ranking."""
        raise NotImplementedError


class Revisitop(RetrievalDataset):
    """A revisitop dataset or a custom folder: full ranking, mAP E/M/H and mP@k."""

    supports_distractors = True
    supports_cvnet = True

    def __init__(self, gnd: Gnd, output_name: str):
        self.gnd, self.name, self.output_name = gnd, gnd.dataset, output_name
        self.queries = Split(f"{self.name} queries", gnd.query_paths, gnd.bboxes,
                             RevisitopImages(gnd.query_paths, gnd.bboxes))
        self.database = Split(f"{self.name} database", gnd.db_paths, None, RevisitopImages(gnd.db_paths))
        self.protocols = protocols(gnd.gnd)

    def evaluate(self, ranks):
        return evaluate_revisitop(ranks, self.protocols)

    def format(self, results):
        return format_results(results)

    def arrays(self, results):
        return {f"map{p}": results[p]["map"] for p in ("E", "M", "H")}

    def per_query(self, before, after):
        return revisitop_table(self.gnd.qimlist, before, after)


class GLDv2Retrieval(RetrievalDataset):
    """GLDv2 retrieval: the top 100 of the index per query, mAP@100 (Public, Private, All)."""

    def __init__(self, gld, top_k: int):
        self.gld, self.name = gld, f"gldv2 {gld.root}"
        self.output_name = "gldv2"  # one GLDv2 root per run (open_datasets refuses a second)
        self.top_k = max(top_k, MAX_PREDICTIONS)
        self.queries = Split("gldv2 queries", gld.query_paths, None, GLDv2Images(gld.query_paths))
        self.database = Split("gldv2 index", gld.index_paths, None, GLDv2Images(gld.index_paths))

    def evaluate(self, ranks):
        return evaluate_gldv2(ranks, self.gld)

    def format(self, results):
        return [format_gldv2(results)]

    def arrays(self, results):
        return {f"map{name}": results[name] for name in ("Public", "Private", "All")}

    def per_query(self, before, after):
        return gldv2_table(self.gld.query_ids, self.gld.usage, before, after)


def open_dataset(entry: str, data_dir, top_k: int) -> RetrievalDataset:
    """One TEST.DATASET_LIST entry, loaded and checked (ground truth valid, every image present).
    Its ground truth and image folder are registered as inputs, so no output lands on them."""
    if entry.startswith("gldv2:"):
        dataset = GLDv2Retrieval(load_gldv2(entry[len("gldv2:"):]), top_k)
        register_input(dataset.gld.root, f"GLDv2 {entry}")
    else:
        gnd = load_dataset_entry(data_dir, entry)
        custom = entry.startswith("custom:")
        output_name = f"{gnd.dataset}_{_short_hash(gnd.image_dir)}" if custom else gnd.dataset
        dataset = Revisitop(gnd, output_name)
        register_input(gnd.gnd_path, f"ground truth of {entry}")
        register_input(gnd.image_dir, f"images of {entry}")
    require_images(dataset.queries.paths + dataset.database.paths, dataset.name)
    return dataset


def open_datasets(entries, data_dir, top_k: int) -> list[RetrievalDataset]:
    """Every TEST.DATASET_LIST entry; two entries that would share outputs are refused."""
    datasets = [open_dataset(entry, data_dir, top_k) for entry in entries]
    seen = {}
    for entry, dataset in zip(entries, datasets):
        if dataset.output_name in seen:
            raise UserError(f"TEST.DATASET_LIST: {seen[dataset.output_name]!r} and {entry!r} would write the "
                            f"same outputs ({dataset.output_name}.npz): list each dataset, and one gldv2 root, once")
        seen[dataset.output_name] = entry
    return datasets

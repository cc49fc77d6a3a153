"""Per-query results of one dataset: each query's AP before and after reranking, with its name, and
the queries a picture selection (TEST.VIS_QUERIES) picks from them.

Units: every score a file stores (results.json, the npz, the csv) is a fraction in [0, 1], as the
official ``compute_map`` returns it; only log.txt and the pictures print x100 with two decimals
(the official log format). A query without a positive for a protocol has AP NaN: it is left out of
that protocol's mAP; the csv leaves its field empty and results.json writes null.

The APs are the evaluation's own (test/retrieval/evaluate.py, test/r1m/search.py or test/data/gldv2.py), so the
mean of a column over its finite values is the mAP the log reports.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from test.outputs.writer import atomic_write

UNITS = "fraction"  # written next to the scores: results.json "units", npz "units"
REVISITOP_LABELS = ("E", "M", "H")
GLDV2_LABELS = ("@100",)


@dataclass(frozen=True)
class PerQuery:
    """One dataset's per-query APs. ``labels``: the P score columns (("E", "M", "H") or ("@100",));
    ``before`` / ``after``: (nq, P) float64 APs of the global ranking and of the final one (equal
    when SupG.rerank is off); ``usage``: GLDv2's Public / Private per query, else None."""

    names: list
    labels: tuple
    before: np.ndarray
    after: np.ndarray
    usage: list | None = None

    def __post_init__(self):
        shape = (len(self.names), len(self.labels))
        if self.before.shape != shape or self.after.shape != shape:
            raise ValueError(f"before / after must be {shape}, got {self.before.shape} / {self.after.shape}")


def revisitop_table(names, before: dict, after: dict) -> PerQuery:
    """From two ``evaluate_revisitop``-style results (``{'E'|'M'|'H': {'aps': (nq,)}}``)."""
    def stack(results):
        return np.stack([np.asarray(results[p]["aps"], dtype=np.float64) for p in REVISITOP_LABELS], axis=1)
    return PerQuery(list(names), REVISITOP_LABELS, stack(before), stack(after))


def gldv2_table(names, usage, before: dict, after: dict) -> PerQuery:
    """From two ``evaluate_gldv2`` results (``{'aps': (nq,)}``): AP@100 per query."""
    def column(results):
        return np.asarray(results["aps"], dtype=np.float64)[:, None]
    return PerQuery(list(names), GLDV2_LABELS, column(before), column(after), usage=list(usage))


def _finite_list(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def json_value(table: PerQuery) -> dict:
    """The results.json ``per_query`` field: column lists in query order, null for NaN."""
    value = {"query": list(table.names),
             "ap_before": {label: _finite_list(table.before[:, i]) for i, label in enumerate(table.labels)},
             "ap_after": {label: _finite_list(table.after[:, i]) for i, label in enumerate(table.labels)}}
    if table.usage is not None:
        value["usage"] = list(table.usage)
    return value


def npz_arrays(table: PerQuery) -> dict:
    """The npz fields: query_names (nq,), ap_labels (P,), ap_before / ap_after (nq, P) float64,
    usage (nq,) for GLDv2, units. Plain str arrays: np.load needs no pickle."""
    arrays = {"query_names": np.array(table.names, dtype=str), "ap_labels": np.array(table.labels, dtype=str),
              "ap_before": table.before, "ap_after": table.after, "units": np.array(UNITS)}
    if table.usage is not None:
        arrays["usage"] = np.array(table.usage, dtype=str)
    return arrays


def csv_name(output_name: str) -> str:
    return f"per_query_{output_name}.csv"


def csv_columns(table: PerQuery) -> list:
    extra = ["usage"] if table.usage is not None else []
    return (["query"] + extra + [f"ap_{label}_{when}" for label in table.labels for when in ("before", "after")]
            + ["run_id"])


def _number(value) -> str:
    return repr(float(value)) if math.isfinite(value) else ""  # repr round-trips the float exactly


def csv_text(table: PerQuery, run_id: str) -> str:
    """One row per query: name, (usage,) ap_<label>_before, ap_<label>_after for each label, run_id."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_columns(table))
    for q, name in enumerate(table.names):
        extra = [table.usage[q]] if table.usage is not None else []
        scores = [_number(t[q, i]) for i in range(len(table.labels)) for t in (table.before, table.after)]
        writer.writerow([name, *extra, *scores, run_id])
    return buffer.getvalue()


def write_csv(out_dir, output_name: str, table: PerQuery, run_id: str) -> Path:
    """<OUT_DIR>/per_query_<output_name>.csv, atomically (replaced by each run on this dataset)."""
    return atomic_write(Path(out_dir) / csv_name(output_name), csv_text(table, run_id), " (OUT_DIR)")


def pick_queries(selection, table: PerQuery) -> list:
    """Query indices a parsed TEST.VIS_QUERIES selection (config.vis_selection) picks in `table`.

    first: the first N. helped / hurt: the N queries with the largest AP gain / loss from reranking
    for the selection's protocol, largest first (ties: query order); only queries whose AP changed
    that way count. names: every query with one of the names, in query order."""
    nq = len(table.names)
    if selection.kind == "first":
        return list(range(min(selection.count, nq)))
    if selection.kind == "names":
        wanted = set(selection.names)
        return [q for q, name in enumerate(table.names) if name in wanted]
    column = table.labels.index(selection.protocol)
    gain = table.after[:, column] - table.before[:, column]
    if selection.kind == "hurt":
        gain = -gain
    order = np.argsort(-np.where(np.isfinite(gain), gain, -np.inf), kind="stable")
    return [int(q) for q in order[:selection.count] if np.isfinite(gain[q]) and gain[q] > 0]

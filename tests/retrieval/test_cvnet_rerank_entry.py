"""test.py with CVNET.RERANK: one small two-stage run end to end, and the settings it refuses."""

import json

import numpy as np
import pytest
import torch

from test.data.gnd import protocols
from test.two_stage.cvnet_rerank import candidate_labels, scored_pairs, select_candidates
from tests.entry_points import assert_nothing_written, base_args, error_line, roxford_workspace, stops_before_any_work
from tests.reference.official_metrics import official_compute_map

TWO_STAGE = ["TEST.DESCRIPTOR", "cvnet", "SupG.rerank", "False", "CVNET.RERANK", "True", "CVNET.TOPK", "3"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return roxford_workspace(tmp_path_factory, "cvnet_rerank", n_db=8, n_query=2)


def test_two_stage_run_writes_the_reranked_rankings_pairs_scores_and_log(entry, workspace, tmp_path):
    root, gnd = workspace
    out = tmp_path / "out"
    done = entry("test.py", *base_args(root, out=out), *TWO_STAGE, "TEST.SAVE_FEATURES", "True", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (out / "log.txt").read_text().splitlines()
    at = lines.index(">> roxford5k: Reranking results with CVNet-Rerank")
    assert lines[at - 3].startswith("Retrieval results: mP@k") and "cvnet-rerank" in lines[at - 2]
    assert lines[at + 1].startswith("Retrieval results: mAP E: ") and at + 2 == len(lines)
    saved = np.load(out / "roxford5k.npz")
    selected = select_candidates(candidate_labels(saved["ranks_global"], gnd["gnd"]), 3)
    pairs, _ = scored_pairs(saved["ranks_global"], selected)
    np.testing.assert_array_equal(saved["cvnet_pairs"], pairs)
    assert saved["cvnet_scores"].shape == (len(pairs),) and np.isfinite(saved["cvnet_scores"]).all()
    official = protocols(gnd["gnd"])
    maps = {}
    for p in "EMH":
        ranks = saved[f"ranks_cvnet_{p}"]
        assert ranks.shape == (8, 2) and (np.sort(ranks, axis=0) == np.arange(8)[:, None]).all()
        assert np.array_equal(ranks[~selected[p]], saved["ranks_global"][~selected[p]])  # only candidates move
        maps[p] = official_compute_map(ranks, official[p], [1, 5, 10])[0]
    assert lines[at + 1] == f"Retrieval results: mAP E: {maps['E'] * 100:.2f}, M: {maps['M'] * 100:.2f}, " \
                            f"H: {maps['H'] * 100:.2f}"
    record = json.loads((out / "results.json").read_text())[-1]
    assert record["reranker"] == {"name": "CVNet-Rerank", "topk": 3, "mix_ratio": 0.5, "image_scale": 1.0,
                                  "pairs_scored": len(pairs)}
    assert record["results"]["E"]["map"] == pytest.approx(maps["E"])
    assert record["first_stage"]["method"] == "CVNet-Global" and "cvnet-rerank" in record["seconds"]


@pytest.mark.parametrize("args,fragments", [
    (["CVNET.RERANK", "True"], ["CVNET.RERANK True and SupG.rerank True", "SupG.rerank False"]),
    (["CVNET.RERANK", "True", "SupG.rerank", "False", "SupG.onemeval", "True"], ["R1M images", "SupG.onemeval False"]),
    (["CVNET.TOPK", "0"], ["CVNET.TOPK", "an integer >= 1"]),
    (["CVNET.MIX_RATIO", "-1"], ["CVNET.MIX_RATIO", "a number >= 0"]),
    (["CVNET.RERANKING", "True"], ["unknown config key 'CVNET.RERANKING'", "CVNET.RERANK"]),
])
def test_contradictory_or_unknown_cvnet_settings_stop_before_any_work(entry, workspace, tmp_path, args, fragments):
    stops_before_any_work(entry, workspace[0], "roxford5k", tmp_path, *fragments, extra=args)


def test_a_checkpoint_without_the_reranking_network_stops_before_any_work(entry, workspace, tmp_path):
    root, _ = workspace
    state = torch.load(root / "weights" / "CVPR2022_CVNet_R50.pyth", weights_only=True)["model_state"]
    backbone_only = tmp_path / "backbone.pyth"
    torch.save({"model_state": {k: v for k, v in state.items() if k.startswith("encoder_q.")}}, backbone_only)
    out = tmp_path / "out"
    args = [*base_args(root, out=out), *TWO_STAGE, "TEST.WEIGHTS", backbone_only]
    done = entry("test.py", *args, cwd=tmp_path)
    error_line(done, "backbone.pyth: no CVNet-Rerank weights (conv2ds.*, cv_learner.*)")
    assert_nothing_written(out)

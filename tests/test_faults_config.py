"""Faults: bad config values on the test.py command line (and in a --cfg file).

The parser itself is unit-tested in tests/test_config.py; here the entry point: exit 2, one
`error:` line naming the key, no traceback, and nothing written (the config is checked before
OUT_DIR is touched, so not even an empty log.txt appears).
"""

import pytest

from tests.faults_common import entry, error_line  # noqa: F401 (fixture)

CASES = [
    ("unknown_key", ["SupG.gemq"], ["unknown config key 'SupG.gemq'", "did you mean"]),
    ("wrong_type", ["SupG.M", "many"], ["bad value 'many' for SupG.M", "an integer"]),
    ("wrong_type_bool", ["SupG.rerank", "maybe"], ["SupG.rerank", "True or False"]),
    ("scale_list_4", ["TEST.SCALE_LIST", "4"], ["TEST.SCALE_LIST", "1, 3, 5"]),
    ("depth_34", ["MODEL.DEPTH", "34"], ["MODEL.DEPTH", "50, 101"]),
    ("negative_M", ["SupG.M", "-5"], ["SupG.M", ">= 1"]),
    ("negative_K", ["SupG.K", "-1"], ["SupG.K", ">= 0"]),
    ("K_not_below_M", ["SupG.M", "10", "SupG.K", "10"], ["SupG.K", "below SupG.M (10)"]),
    ("negative_beta", ["SupG.beta", "-0.1"], ["SupG.beta", ">= 0"]),
    ("missing_value", ["SupG.M"], ["missing value for SupG.M"]),
]


@pytest.mark.parametrize("case, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_config_value_stops_with_one_line(tmp_path, entry, case, argv, fragments):
    out = tmp_path / "out"
    done = entry("test.py", *argv, "OUT_DIR", out, cwd=tmp_path, subprocess=case == "scale_list_4")
    error_line(done, *fragments)
    assert not out.exists() and not (tmp_path / "log.txt").exists()


@pytest.mark.parametrize("text, fragments", [
    ("SupG:\n  gemq: True\n", ["bad config file", "gemq"]),
    ("SupG: [unclosed\n", ["bad config file"]),
], ids=["unknown_key", "not_yaml"])
def test_bad_config_file_stops_with_one_line(tmp_path, entry, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    error_line(entry("test.py", "--cfg", path, "OUT_DIR", out, cwd=tmp_path, subprocess=True), str(path), *fragments)
    assert not out.exists()

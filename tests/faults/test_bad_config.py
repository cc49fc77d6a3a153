"""Faults: bad config values on the test.py command line and in a --cfg file.

A --cfg file is YAML only (.yaml/.yml, yaml.safe_load): any other kind is refused unread, since
yacs would execute a .py config. Every malformed shape, wrong type and non-finite number stops
with one line naming the file and the key.

The parser itself is unit-tested in tests/scripts/test_config.py; here the entry point: exit 2, one
`error:` line naming the key, no traceback, and nothing written (the config is checked before
OUT_DIR is touched, so not even an empty log.txt appears).
"""

import pytest

from tests.entry_points import error_line

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
    ("device_tpu", ["DEVICE", "tpu"], ["bad value 'tpu' for DEVICE", "auto, cpu, cuda or cuda:N"]),
    ("device_index_128", ["DEVICE", "cuda:128"], ["bad value 'cuda:128' for DEVICE", "N from 0 to 127"]),
    # a window far beyond any feature map only pads it: 99999 tried to allocate 80 TB
    ("rgem_size_huge", ["SupG.rgem_size", "99999"], ["SupG.rgem_size", "an odd integer from 1 to 99"]),
    ("rgem_size_even", ["SupG.rgem_size", "4"], ["SupG.rgem_size", "an odd integer"]),
    # bytes that are not UTF-8 (latin-1 'é') reach Python as a lone surrogate: OpenCV would crash on it
    ("cache_dir_latin1", ["TEST.CACHE_DIR", "caf\udce9"], ["for TEST.CACHE_DIR", "not UTF-8", "rename it"]),
    ("data_dir_latin1", ["TEST.DATA_DIR", "/data/caf\udce9"], ["for TEST.DATA_DIR", "not UTF-8"]),
]


@pytest.mark.parametrize("case, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_config_value_stops_with_one_line(tmp_path, entry, case, argv, fragments):
    out = tmp_path / "out"
    done = entry("test.py", *argv, "OUT_DIR", out, cwd=tmp_path, subprocess=case == "scale_list_4")
    error_line(done, *fragments)
    assert not out.exists() and not (tmp_path / "log.txt").exists()


# (file name, text, fragments of the error): every shape a YAML file can take that is not a config
LAUGHS = "SupG:\n  K: [&x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + ", ".join(
    f"&x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]" for i in range(1, 10)) + "]\n"  # 9^10 strings
BAD_FILES = [
    ("yaml_alias", "bad.yaml", "SupG:\n  M: &m 300\n  K: *m\n", ["bad config file", "line 3: YAML aliases"]),
    ("billion_laughs", "bad.yaml", LAUGHS, ["bad config file", "YAML aliases"]),
    ("huge_wrong_value", "bad.yaml", "SupG:\n  K: [" + ", ".join(["123456789"] * 20000) + "]\n",
     ["bad value [123456789, ", "...", "for SupG.K"]),
    ("unknown_key", "bad.yaml", "SupG:\n  gemq: True\n", ["bad config file", "unknown config key 'SupG.gemq'"]),
    ("not_yaml", "bad.yaml", "SupG: [unclosed\n", ["bad config file", "not valid YAML"]),
    ("top_level_list", "bad.yml", "- SupG\n- M\n", ["expected a mapping of sections", "found list"]),
    ("top_level_null", "bad.yaml", "# nothing but a comment\n", ["expected a mapping", "empty file"]),
    ("top_level_scalar", "bad.yaml", "400\n", ["expected a mapping", "found int 400"]),
    ("string_for_int", "bad.yaml", "SupG:\n  M: many\n", ["bad value 'many' for SupG.M", "an integer"]),
    ("float_for_int", "bad.yaml", "SupG:\n  M: 3.5\n", ["bad value 3.5 for SupG.M", "an integer"]),
    ("bool_for_int", "bad.yaml", "SupG:\n  K: true\n", ["bad value True for SupG.K", "an integer"]),
    ("int_for_bool", "bad.yaml", "SupG:\n  rerank: 2\n", ["bad value 2 for SupG.rerank", "True or False"]),
    ("dict_for_value", "bad.yaml", "SupG:\n  beta: {a: 1}\n", ["bad value {'a': 1} for SupG.beta", "a number"]),
    ("value_for_section", "bad.yaml", "SupG: 3\n", ["SupG is a section"]),
    ("null_for_string", "bad.yaml", "OUT_DIR:\n", ["bad value None for OUT_DIR", "a string"]),
    ("bad_choice", "bad.yaml", "MODEL:\n  DEPTH: 34\n", ["bad value 34 for MODEL.DEPTH", "50, 101"]),
    ("list_of_numbers", "bad.yaml", "TEST:\n  DATASET_LIST: [1, 2]\n", ["TEST.DATASET_LIST", "a list"]),
    ("nested_too_deep", "bad.yaml", "[" * 20000 + "]" * 20000 + "\n", ["nested too deeply"]),
    ("python_tag", "bad.yaml", "!!python/object/apply:os.system ['echo ran']\n", ["not valid YAML", "python/object"]),
    ("two_documents", "bad.yaml", "SupG:\n  M: 5\n---\nSupG:\n  M: 6\n", ["not valid YAML"]),
]
SUBPROCESS_FILES = {"unknown_key", "python_tag"}


@pytest.mark.parametrize("case, name, text, fragments", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_config_file_stops_with_one_line(tmp_path, entry, case, name, text, fragments):
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "out"
    done = entry("test.py", "--cfg", path, "OUT_DIR", out, cwd=tmp_path, subprocess=case in SUBPROCESS_FILES)
    error_line(done, str(path), *fragments)
    assert not out.exists() and "ran" not in done.stdout


@pytest.mark.parametrize("name", ["evil.py", "evil.cfg", "evil", "evil.json"])
def test_non_yaml_config_is_refused_without_running_it(tmp_path, entry, name):
    """yacs' merge_from_file executes a .py config: only .yaml/.yml files are read, as data."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / name
    path.write_text(f"import os\nos.mkdir({str(marker)!r})\nfrom yacs.config import CfgNode\ncfg = CfgNode()\n")
    out = tmp_path / "out"
    done = entry("test.py", "--cfg", path, "OUT_DIR", out, cwd=tmp_path, subprocess=name == "evil.py")
    error_line(done, str(path), "only YAML files (.yaml or .yml)")
    assert not marker.exists() and not out.exists()


def test_non_utf8_config_file(tmp_path, entry):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("OUT_DIR: caf\xe9\n".encode("latin-1"))
    error_line(entry("test.py", "--cfg", path, cwd=tmp_path), str(path), "not UTF-8")


def test_config_file_given_twice(tmp_path, entry):
    path = tmp_path / "a.yaml"
    path.write_text("SupG:\n  M: 10\n")
    error_line(entry("test.py", "--cfg", path, "--cfg", path, cwd=tmp_path), "--cfg given twice")


# numbers that parse but are not finite, or a GeM power at which float32 pooling overflows
NON_FINITE = [
    ("relup_alpha_inf", ["SupG.relup_alpha", "inf"], ["bad value inf for SupG.relup_alpha", "a finite number"]),
    ("beta_nan", ["SupG.beta", "nan"], ["bad value nan for SupG.beta", "a finite number"]),
    ("gemp_p_1e400", ["SupG.gemp_p", "1e400"], ["bad value inf for SupG.gemp_p", "a finite number"]),
    ("rgem_p_minus_inf", ["SupG.rgem_p", "-inf"], ["bad value -inf for SupG.rgem_p", "a finite number"]),
    ("gemp_p_too_large", ["SupG.gemp_p", "30"], ["bad value 30.0 for SupG.gemp_p", "from 0.1 to 16.0"]),
    ("rgem_p_too_large", ["SupG.rgem_p", "100"], ["SupG.rgem_p", "from 0.1 to 16.0"]),
    ("gemp_p_too_small", ["SupG.gemp_p", "1e-12"], ["SupG.gemp_p", "from 0.1 to 16.0"]),
    ("M_beyond_int64", ["SupG.M", str(2 ** 64)], ["SupG.M", "fits in 64 bits"]),
]


@pytest.mark.parametrize("case, argv, fragments", NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_number_is_refused_at_config_time(tmp_path, entry, case, argv, fragments):
    """Refused before anything is read or written: no weights, no dataset, no OUT_DIR are needed."""
    out = tmp_path / "out"
    done = entry("test.py", *argv, "OUT_DIR", out, cwd=tmp_path, subprocess=case == "relup_alpha_inf")
    error_line(done, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("text, fragments", [
    ("SupG:\n  relup_alpha: .inf\n", ["bad value inf for SupG.relup_alpha"]),
    ("SupG:\n  beta: .nan\n", ["bad value nan for SupG.beta"]),
    ("SupG:\n  gemp_p: 1.0e400\n", ["bad value inf for SupG.gemp_p"]),
], ids=["inf", "nan", "1e400_string"])
def test_non_finite_number_in_config_file(tmp_path, entry, text, fragments):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    error_line(entry("test.py", "--cfg", path, "OUT_DIR", tmp_path / "out", cwd=tmp_path), path, *fragments,
               "a finite number")


@pytest.mark.parametrize("argv, fragments", [
    # the flag contradicts the pair even though the value given equals the default
    (["--M", "50", "--K", "3", "SupG.K", "9"], ["--K 3 contradicts 9", "give it once"]),
    # the real problem is M (5 vs 6); K=1 from --K is fine with either
    (["--M", "5", "SupG.M", "6", "--K", "1"], ["--M 5 contradicts 6"]),
])
def test_rerank_features_flag_against_key_value_pair(tmp_path, entry, argv, fragments):
    done = entry("rerank_features.py", "--query", "Q.npy", "--db", "X.npy", *argv, cwd=tmp_path)
    error_line(done, *fragments)


def test_rerank_features_flag_settles_a_pair_only_valid_with_it(tmp_path, entry):
    """SupG.M 6 alone would clash with the default K=9; --K 1 makes the whole valid: it is checked
    once, with every source applied (then the missing feature file is what stops the run)."""
    done = entry("rerank_features.py", "--query", "Q.npy", "--db", "X.npy", "--out", "r.npy", "SupG.M", "6", "--K", "1",
                 cwd=tmp_path)
    error_line(done, "file not found: Q.npy")

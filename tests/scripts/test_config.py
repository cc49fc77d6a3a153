"""The command line as users type it: the paper's README line, yacs pairs, and one-line errors."""

import pytest

import config
from errors import UserError

PAPER_LINE = ("MODEL.DEPTH 50 TEST.WEIGHTS ./weights TEST.DATA_DIR ./revisitop SupG.gemp SupG.rgem "
              "SupG.sgem SupG.relup SupG.rerank SupG.onemeval False")


def parse(line):
    return config.load_cfg_from_args(line.split())


def test_paper_line_sets_bare_flags_true_and_explicit_values():
    cfg = parse(PAPER_LINE)
    assert cfg.MODEL.DEPTH == 50 and cfg.TEST.WEIGHTS == "./weights"
    assert cfg.TEST.DATA_DIR == "./revisitop"
    assert all(cfg.SupG[k] for k in ("gemp", "rgem", "sgem", "relup", "rerank"))
    assert cfg.SupG.onemeval is False


def test_flag_at_end_of_line_means_true():
    assert parse("SupG.rerank False SupG.onemeval").SupG.onemeval is True
    assert parse("SupG.gemp false SupG.rgem 0").SupG.gemp is False


def test_defaults_follow_the_paper():
    cfg = config.get_cfg_defaults()
    assert (cfg.SupG.gemp_p, cfg.SupG.rgem_p, cfg.SupG.rgem_size) == (4.6, 2.5, 5)
    assert (cfg.SupG.relup_alpha, cfg.SupG.M, cfg.SupG.K, cfg.SupG.beta) == (0.014, 400, 9, 0.15)
    assert cfg.SupG.onemeval is False and cfg.TEST.SCALE_LIST == 3
    assert config.scales_of(3) == [0.7071, 1.0, 1.4142]
    assert config.scales_of(5) == [0.5, 0.7071, 1.0, 1.4142, 2.0]


def test_typed_values_and_lists():
    cfg = parse("MODEL.DEPTH 101 SupG.beta 0.2 TEST.DATASET_LIST roxford5k OUT_DIR out.dir")
    assert cfg.MODEL.DEPTH == 101 and cfg.SupG.beta == 0.2
    assert cfg.TEST.DATASET_LIST == ["roxford5k"] and cfg.OUT_DIR == "out.dir"
    assert parse("TEST.DATASET_LIST ['rparis6k','roxford5k']").TEST.DATASET_LIST == ["rparis6k", "roxford5k"]


@pytest.mark.parametrize("line, words", [
    ("SupG.gemq", ["unknown config key 'SupG.gemq'", "did you mean"]),
    ("model.depth 50", ["unknown config key 'model.depth'", "MODEL.DEPTH"]),
    ("MODEL.DEPTH 34", ["MODEL.DEPTH", "50, 101"]),
    ("TEST.SCALE_LIST 4", ["TEST.SCALE_LIST", "1, 3, 5"]),
    ("SupG.M", ["missing value for SupG.M"]),
    ("SupG.M -3", ["SupG.M", ">= 1"]),
    ("SupG.K -1", ["SupG.K", ">= 0"]),
    ("SupG.K 400", ["SupG.K", "below SupG.M"]),
    ("SupG.beta -0.1", ["SupG.beta", ">= 0"]),
    ("SupG.rerank maybe", ["SupG.rerank", "True or False"]),
    ("MODEL.DEPTH fifty", ["MODEL.DEPTH", "50, 101"]),
    ("DEVICE gpu", ["DEVICE", "cuda:N"]),
    ("DEVICE cuda:128", ["DEVICE", "N from 0 to 127"]),  # torch would wrap it to cuda:-128
    ("DEVICE cuda:00", ["DEVICE", "cuda:N"]),
    ("DEVICE cuda:99999999999999999999", ["DEVICE", "cuda:N"]),
])
def test_bad_command_lines_name_the_key(line, words):
    with pytest.raises(UserError) as error:
        parse(line)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_every_key_is_documented():
    described = config.describe_keys()
    flat = config._flat_keys(config.get_cfg_defaults())
    for key in flat:
        assert f"  {key} " in described, key


def test_yaml_file_equals_the_same_command_line(tmp_path):
    path = tmp_path / "paper.yml"
    path.write_text("MODEL:\n  DEPTH: 101\nTEST:\n  DATASET_LIST: [rparis6k]\n  SCALE_LIST: '1'\n"
                    "SupG:\n  rerank: false\n  beta: 1\n  gemp_p: 3\n  M: 50\n")
    from_file = config.load_cfg_from_args(["--cfg", str(path)])
    typed = parse("MODEL.DEPTH 101 TEST.DATASET_LIST rparis6k TEST.SCALE_LIST 1 SupG.rerank False "
                  "SupG.beta 1 SupG.gemp_p 3 SupG.M 50")
    assert from_file == typed
    assert isinstance(from_file.SupG.beta, float) and isinstance(from_file.TEST.SCALE_LIST, int)


def test_command_line_overrides_the_file_and_range_errors_name_their_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("SupG:\n  M: 10\n  K: 20\n")
    assert config.load_cfg_from_args(["--cfg", str(path), "SupG.K", "5"]).SupG.K == 5
    with pytest.raises(UserError, match=f"^bad config file {path}: bad value 20 for SupG.K"):
        config.load_cfg_from_args(["--cfg", str(path)])
    with pytest.raises(UserError, match="^bad value 30 for SupG.K"):  # the command line set it
        config.load_cfg_from_args(["--cfg", str(path), "SupG.K", "30"])


@pytest.mark.parametrize("key", ["SupG.gemp_p", "SupG.rgem_p"])
def test_power_bounds_are_inclusive(key):
    low, high = config.POWER_RANGE
    assert parse(f"{key} {low}")[key.split(".")[0]][key.split(".")[1]] == low
    assert parse(f"{key} {high}")[key.split(".")[0]][key.split(".")[1]] == high
    for value in (low / 2, high + 0.5, 0, -1):
        with pytest.raises(UserError, match=key):
            parse(f"{key} {value}")


def test_config_reference_is_the_help_key_list():
    """The key table of docs/config.md is what `python test.py --help` prints, so it cannot go stale."""
    from pathlib import Path

    reference = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert "```\n" + config.describe_keys().rstrip("\n") + "\n```" in reference


def write_yaml(path, text):
    path.write_text(text)
    return str(path)


def test_config_yaml_without_version_reads_as_version_one(tmp_path):
    cfg = config.load_cfg_from_args(["--cfg", write_yaml(tmp_path / "c.yaml", "SupG:\n  M: 123\n")])
    assert cfg.SupG.M == 123 and cfg.VERSION == config.get_cfg_defaults().VERSION == 1


def test_config_yaml_of_a_newer_version_is_refused(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", "VERSION: 7\nSupG:\n  M: 123\n")
    with pytest.raises(UserError, match=r"VERSION 7, newer than this code's 1"):
        config.load_cfg_from_args(["--cfg", path])


def test_renamed_key_of_an_older_config_yaml_reads_under_its_new_name(tmp_path, monkeypatch):
    """A rename registered in RENAMED_KEYS: an older file's key lands on the new key, the old name is
    unknown on the command line, and setting both in one file is refused."""
    monkeypatch.setitem(config._C, "VERSION", 2)
    monkeypatch.setitem(config._CHOICES, "VERSION", [2])
    monkeypatch.setitem(config.RENAMED_KEYS, 1, {"SupG.beta": "SupG.K", "SupG.rgem_p": None})
    old = write_yaml(tmp_path / "old.yaml", "VERSION: 1\nSupG:\n  beta: 5\n  rgem_p: 3.0\n")
    cfg = config.load_cfg_from_args(["--cfg", old])
    assert cfg.SupG.K == 5 and cfg.SupG.beta == 0.15 and cfg.SupG.rgem_p == 2.5 and cfg.VERSION == 2
    both = write_yaml(tmp_path / "both.yaml", "VERSION: 1\nSupG:\n  beta: 5\n  K: 4\n")
    with pytest.raises(UserError, match="SupG.beta .renamed SupG.K in version 2. and SupG.K are both set"):
        config.load_cfg_from_args(["--cfg", both])
    current = write_yaml(tmp_path / "new.yaml", "VERSION: 2\nSupG:\n  K: 4\n")
    assert config.load_cfg_from_args(["--cfg", current]).SupG.K == 4


def test_written_config_yaml_records_the_version():
    assert "VERSION: 1" in config.get_cfg_defaults().dump()

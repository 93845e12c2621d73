"""Configs: YAML + dotted overrides + ${ENV} expansion, validated with errors naming file and key."""

import pytest

from lmforge.config import ConfigError, PretrainDataConfig, SFTDataConfig, load_config

YAML = """\
tokenizer: ${TOK_DIR:-/models/tok}
output_dir: out
sources:
  - path: a.txt
    weight: 2
  - path: [b.jsonl, "c/*.jsonl"]
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(YAML)
    return path


def test_yaml_loads_with_defaults_and_env_expansion(config_file, monkeypatch):
    monkeypatch.delenv("TOK_DIR", raising=False)
    cfg = load_config(PretrainDataConfig, config_file)
    assert cfg.tokenizer == "/models/tok"
    assert [s.name for s in cfg.sources] == ["a", "b"]
    assert cfg.sources[1].path == ["b.jsonl", "c/*.jsonl"]
    assert cfg.pack.block_size == 1024
    monkeypatch.setenv("TOK_DIR", "/elsewhere")
    assert load_config(PretrainDataConfig, config_file).tokenizer == "/elsewhere"


def test_dotted_overrides_reach_nested_fields_and_list_items(config_file):
    cfg = load_config(
        PretrainDataConfig,
        config_file,
        ["pack.block_size=2048", "sources.1.weight=0.5", "dedup.near=false", "ray.address=auto"],
    )
    assert cfg.pack.block_size == 2048
    assert cfg.sources[1].weight == 0.5
    assert cfg.dedup.near is False
    assert cfg.ray.address == "auto"


def test_unknown_override_key_is_named_with_a_suggestion(config_file):
    with pytest.raises(ConfigError, match=r"pack\.blok_size: unknown key \(did you mean 'block_size'\?\)"):
        load_config(PretrainDataConfig, config_file, ["pack.blok_size=2048"])


def test_bad_values_name_the_field(config_file):
    with pytest.raises(ConfigError, match=r"sources\.0\.weight: Input should be greater than 0"):
        load_config(PretrainDataConfig, config_file, ["sources.0.weight=0"])
    with pytest.raises(ConfigError, match=r"index of a list of 2"):
        load_config(PretrainDataConfig, config_file, ["sources.5.weight=1"])


def test_missing_required_fields_and_files_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"tokenizer: Field required"):
        load_config(PretrainDataConfig, None, ["output_dir=o"])
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(PretrainDataConfig, tmp_path / "nope.yaml")


def test_duplicate_source_names_are_rejected(config_file):
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(PretrainDataConfig, config_file, ["sources.1.name=a"])


def test_sft_datasets_follow_the_same_source_rules(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("tokenizer: tok\noutput_dir: out\nsources:\n  - path: a.jsonl\n  - path: [b.json]\n")
    cfg = load_config(SFTDataConfig, path)
    assert [(s.name, s.path, s.weight) for s in cfg.sources] == [
        ("a", ["a.jsonl"], None),
        ("b", ["b.json"], None),
    ]
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(SFTDataConfig, path, ["sources.1.name=a"])
    with pytest.raises(ConfigError, match=r"sources\.0\.format: Input should be 'jsonl'"):
        load_config(SFTDataConfig, path, ["sources.0.format=text"])  # SFT records are never plain text

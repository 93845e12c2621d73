"""The trained tokenizer loads with AutoTokenizer, round-trips Chinese and renders the classic chat;
its manifest lists every input file."""

import hashlib
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmforge.config import SourceConfig, TokenizerTrainConfig
from lmforge.data.stages.train_tokenizer import tokenizer_identity, train_tokenizer
from lmforge.manifest import Manifest


def test_tokenizer_round_trips_chinese_and_english(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    text = "传染病是指由病原微生物感染人体后产生的疾病。 Fever is common."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>" and tokenizer.bos_token == "<s>"


def test_chat_template_is_the_classic_user_assistant_format(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    messages = [{"role": "user", "content": "头痛怎么办？"}, {"role": "assistant", "content": "多休息。"},
                {"role": "user", "content": "还疼"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "User: 头痛怎么办？</s>\n Assistant: 多休息。</s>\n User: 还疼</s>\n Assistant: "


def test_identity_names_vocab_and_special_ids(tiny_tokenizer):
    identity = tokenizer_identity(tiny_tokenizer)
    assert identity["vocab_size"] == 2000 and identity["eos_token_id"] is not None
    assert len(identity["tokenizer_json_sha256"]) == 64


def test_classic_template_renders_tools_in_the_system_part_and_tool_results_as_observations(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    tools = [{"name": "查询药品", "parameters": {"type": "object"}}]
    messages = [{"role": "system", "content": "你是医生。"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "call"}, {"role": "tool", "content": "result"}]
    rendered = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        '你是医生。\n\n可用工具:\n[{"name": "查询药品", "parameters": {"type": "object"}}]</s>'
        "\n User: q</s>\n Assistant: call</s>\n Observation: result</s>\n Assistant: "
    )


def test_classic_template_refuses_an_unknown_role(tiny_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    with pytest.raises(Exception, match="unknown role bot"):
        tokenizer.apply_chat_template([{"role": "bot", "content": "hi"}], tokenize=False)


def test_the_manifest_lists_each_input_file_with_its_checksum(tiny_tokenizer, shared_data):
    inputs = Manifest.read(tiny_tokenizer).inputs
    fever = shared_data / "pretrain" / "fever.txt"
    assert [Path(i["path"]).name for i in inputs] == ["fever.txt", "c4_demo.jsonl", "wiki_demo.txt"]
    assert inputs[0] | {"detected": None} == {
        "source": "fever", "path": str(fever.resolve()), "size": fever.stat().st_size,
        "sha256": hashlib.sha256(fever.read_bytes()).hexdigest(), "encoding": "utf-8", "format": "text",
        "text_unit": "line", "detected": None, "chunks": 1}  # detected: why auto chose the unit
    assert inputs[1]["format"] == "jsonl"


def test_an_unreadable_file_is_reported_and_the_others_still_train(tmp_path):
    (tmp_path / "good.txt").write_text("发热是常见症状。\nFever is common.\n" * 20, encoding="utf-8")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    manifest = train_tokenizer(
        TokenizerTrainConfig(
            sources=[
                SourceConfig(path=str(tmp_path / "good.txt")),
                SourceConfig(path=str(tmp_path / "broken.parquet")),
            ],
            output_dir=str(tmp_path / "out"),
            vocab_size=300,
        )
    )
    assert manifest.counts["unreadable_files"] == 1 and manifest.counts["documents"] == 40
    assert "sha256" in manifest.inputs[0]
    assert manifest.inputs[1]["error"].startswith(f"cannot read {tmp_path / 'broken.parquet'} as parquet")


def test_reading_the_files_gives_what_auto_tokenizer_gives(tiny_tokenizer, monkeypatch):
    from lmforge.data.steps import tokenize

    files = tokenize.TokenizerSpec.from_directory(str(tiny_tokenizer), add_bos=True)
    identity = tokenizer_identity(tiny_tokenizer)
    monkeypatch.setattr(tokenize.TokenizerFiles, "read", staticmethod(lambda _path: None))  # AutoTokenizer
    assert files == tokenize.TokenizerSpec.from_directory(str(tiny_tokenizer), add_bos=True)
    assert identity == tokenizer_identity(tiny_tokenizer)


def test_a_model_specific_tokenizer_class_is_left_to_auto_tokenizer(tiny_tokenizer, tmp_path):
    from lmforge.data.steps.tokenize import TokenizerFiles

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_tokenizer / name).read_bytes())
    assert TokenizerFiles.read(str(tmp_path)) is not None
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"TokenizersBackend"', '"LlamaTokenizer"'))
    assert TokenizerFiles.read(str(tmp_path)) is None


def test_a_tokenizer_path_that_is_no_directory_is_named(tmp_path):
    from lmforge.data.steps.tokenize import TokenizerSpec

    with pytest.raises(FileNotFoundError, match="is not a directory"):
        TokenizerSpec.from_directory(str(tmp_path / "missing"))

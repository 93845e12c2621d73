"""prepare-preference end to end on a real local Ray: the shared preference files with the defaults a user
gets (the CLI's own Ray with the machine's CPUs), then small files of the other shapes users have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from transformers import AutoTokenizer

from lmforge.align.prepare import run_prepare_preference
from lmforge.config import ConfigError, PreferenceDataConfig
from lmforge.data.files.sources import POSITION_BITS, list_source_files, survey_source_file
from lmforge.data.stages.prepare_preference import resolve_record_formats
from lmforge.data.stages.source_records import EmptyOutput
from lmforge.data.stages.train_tokenizer import CLASSIC_CHAT_TEMPLATE
from lmforge.data.text.conversation import Conversation
from lmforge.data.text.preference_formats import to_preference
from lmforge.manifest import Manifest
from lmforge.stage_outputs import PreferenceRows
from lmforge.stages import STAGES
from lmforge.train.data import read_prepared_data

PAIRED_FILES = ["dpo_zh_demo.json", "v1_dpo_demo.jsonl", "toolcall_dpo_zh_demo.jsonl"]
PIPELINE_TIMEOUT_S = 400  # both runs with their own Ray take ~60 s here; a hang would wait forever


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def _config(tokenizer: Path, out: Path, sources: list[dict], **extra) -> PreferenceDataConfig:
    return PreferenceDataConfig.model_validate({"tokenizer": str(tokenizer), "output_dir": str(out),
                                                "sources": sources, **extra})


def _rows(manifest: Manifest, out: Path) -> list[dict]:
    return [row for shard in manifest.outputs["shards"]
            for row in pq.read_table(out / shard["file"]).to_pylist()]


def _pairs(rows: list[dict]):
    """(kinds, pair_key, [(input_ids, labels), ...]) of every pair (or KTO sample + KL) of every row."""
    for row in rows:
        start, sequences = 0, []
        for length in row["boundaries"]:
            sequences.append((row["input_ids"][start:start + length], row["labels"][start:start + length]))
            start += length
        for i in range(0, len(sequences), 2):
            yield row["kinds"][i:i + 2], row["pair_keys"][i:i + 2], sequences[i:i + 2]


def _prompt_length(labels: list[int]) -> int:
    return next(i for i, label in enumerate(labels) if label != -100)


def _record(key: int, manifest: Manifest) -> tuple[str, dict]:
    """The input file and record a pair came from (key = file index << 40 | position: line, JSON ordinal)."""
    path = manifest.inputs[key >> POSITION_BITS]["path"]
    position = key & ((1 << POSITION_BITS) - 1)
    text = Path(path).read_text(encoding="utf-8")
    records = json.loads(text) if path.endswith(".json") else [json.loads(line) for line in text.splitlines()]
    return path, records[position - 1]


def _served(tokenizer, prompt) -> list[int]:
    text = tokenizer.apply_chat_template(prompt.messages(), tools=prompt.tools, add_generation_prompt=True,
                                         tokenize=False, chat_template=CLASSIC_CHAT_TEMPLATE)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer))


# --- the shared files, as a user runs them: the CLI, its own Ray of the machine's CPUs, no options --------

@pytest.fixture(scope="module")
def shared_runs(tiny_tokenizer, shared_data, tmp_path_factory) -> dict[str, tuple[Manifest, Path]]:
    """`lmforge pipeline` of two prepare-preference runs (paired files; the KTO file) on one Ray."""
    root = tmp_path_factory.mktemp("preference-shared")
    configs = {
        "paired": {"sources": [{"path": str(shared_data / "preference" / name)} for name in PAIRED_FILES]},
        "kto": {"sources": [{"path": str(shared_data / "preference" / "kto_en_demo.json")}]},
    }
    stages = [{"stage": "prepare-preference",
               "config": {"tokenizer": str(tiny_tokenizer), "output_dir": str(root / name), **config}}
              for name, config in configs.items()]
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"stages": stages}, allow_unicode=True), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray, not the session's
    try:
        result = subprocess.run([sys.executable, "-m", "lmforge.cli", "pipeline", str(config)],
                                cwd=root, env=env, capture_output=True, text=True, check=False,
                                timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"prepare-preference did not finish in {PIPELINE_TIMEOUT_S} s (a hang?): "
                    f"{(expired.stderr or b'')[-3000:]!r}")
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: (Manifest.read(root / name), root / name) for name in configs}


def test_every_shared_file_gets_its_schema_and_counts_that_reconcile(shared_runs):
    manifest, _ = shared_runs["paired"]
    assert {Path(i["path"]).name: i["record_format"] for i in manifest.inputs} == {
        "dpo_zh_demo.json": "sharegpt_pair", "v1_dpo_demo.jsonl": "llamafactory_v1",
        "toolcall_dpo_zh_demo.jsonl": "sharegpt_pair"}
    sources = manifest.counts["sources"]
    assert {name: row["read"] for name, row in sources.items()} == {
        "dpo_zh_demo": 300, "v1_dpo_demo": 10, "toolcall_dpo_zh_demo": 11}
    for name, row in sources.items():
        dropped = sum(row["filtered"].values()) + row["exact_duplicates"] + row["near_duplicates"]
        assert row["read"] == row["kept_documents"] + dropped + row["quarantined"], name
        assert row["quarantined"] == 0 and row["output_documents"] == row["kept_documents"] > 0, name
    outputs = manifest.outputs
    assert outputs["pairs"] == manifest.counts["total"]["output_documents"]
    assert outputs["sequences"] == 2 * outputs["pairs"]
    assert outputs["truncated"] == sum(row["truncated"] for row in sources.values())


def test_shared_pairs_are_whole_adjacent_and_their_prompts_are_what_serving_sends(shared_runs, tokenizer):
    manifest, out = shared_runs["paired"]
    rows = _rows(manifest, out)
    assert all(len(row["input_ids"]) == sum(row["boundaries"]) <= 2 * 1024 for row in rows)
    checked = 0
    for kinds, keys, ((chosen, chosen_labels), (rejected, rejected_labels)) in _pairs(rows):
        assert kinds == [0, 1] and keys[0] == keys[1]
        assert len(chosen) <= 1024 and len(rejected) <= 1024
        prompt = _prompt_length(chosen_labels)
        assert _prompt_length(rejected_labels) == prompt and chosen[:prompt] == rejected[:prompt]
        assert chosen_labels[prompt:] == chosen[prompt:] and rejected_labels[prompt:] == rejected[prompt:]
        path, record = _record(keys[0], manifest)
        example = to_preference(record, "llamafactory_v1" if path.endswith("v1_dpo_demo.jsonl")
                                else "sharegpt_pair")
        if chosen[:prompt] == _served(tokenizer, example.prompt):  # not shortened
            [answer] = example.chosen
            whole = tokenizer(answer.content + "</s>", add_special_tokens=False)["input_ids"]
            assert chosen[prompt:] == whole[:len(chosen) - prompt]  # whole, or its start when cut
            checked += 1
    assert checked > 250


def test_the_tool_call_files_chosen_tool_call_is_trained(shared_runs, tokenizer):
    manifest, out = shared_runs["paired"]
    calls = []
    for _, keys, ((chosen, labels), _) in _pairs(_rows(manifest, out)):
        if manifest.inputs[keys[0] >> POSITION_BITS]["path"].endswith("toolcall_dpo_zh_demo.jsonl"):
            trained = tokenizer.decode([t for t, label in zip(chosen, labels, strict=True) if label != -100])
            if trained.startswith("Action:"):
                calls.append((trained, tokenizer.decode(chosen)))
    assert len(calls) >= 4
    assert all(trained.endswith("}</s>") for trained, _ in calls)
    assert all("可用工具:" in whole for _, whole in calls)  # the tools are in the prompt


def test_the_manifest_records_template_eos_and_layout_and_training_accepts_it(shared_runs, tokenizer):
    _, out = shared_runs["paired"]
    outputs = read_prepared_data(out)
    assert isinstance(outputs, PreferenceRows) and STAGES["prepare-preference"].outputs is PreferenceRows
    assert outputs.chat_template == CLASSIC_CHAT_TEMPLATE and outputs.eos_token_id == tokenizer.eos_token_id
    assert (outputs.max_length, outputs.row_length, outputs.sequence_length) == (1024, 2048, 2048)
    assert outputs.paired and outputs.desirable is None and outputs.reference is None
    assert outputs.columns["kinds"] == "list<int8>" and 0.5 < outputs.utilisation <= 1
    assert all((out / name).stat().st_size > 1000 for name in outputs.plots)
    assert (out / "quarantine.jsonl").is_file() and (out / "dedup_clusters.jsonl").is_file()


def test_each_kto_sample_is_followed_by_its_kl_sequence(shared_runs):
    manifest, out = shared_runs["kto"]
    outputs = manifest.outputs
    samples = list(_pairs(_rows(manifest, out)))
    completions = {tuple(ids[_prompt_length(labels):]) for kinds, _, ((ids, labels), _) in samples}
    own = 0
    for kinds, keys, ((ids, labels), (kl, kl_labels)) in samples:
        assert kinds[0] in (0, 1) and kinds[1] == 2 and keys[0] == keys[1]
        prompt = _prompt_length(labels)
        assert _prompt_length(kl_labels) == prompt and kl[:prompt] == ids[:prompt]
        assert kl_labels[prompt:] == kl[prompt:] and len(kl) <= 1024
        assert any(c[:len(kl) - prompt] == tuple(kl[prompt:]) for c in completions)
        own += kl[prompt:] == ids[prompt:]
    assert own == 0  # each took another sample's completion
    assert not outputs["paired"] and outputs["desirable"] == sum(k[0] == 0 for k, _, _ in samples) > 100
    assert outputs["undesirable"] == sum(k[0] == 1 for k, _, _ in samples) > 100
    assert (outputs["desirable"] + outputs["undesirable"] == outputs["pairs"]
            == manifest.counts["total"]["output_documents"])


# --- the other shapes users have, and records that cannot be used: the session's Ray -----------------------

HH_PREFIX = [{"role": "user", "content": "Hi, I have a headache."},
             {"role": "assistant", "content": "Since when?"},
             {"role": "user", "content": "Since this morning. What should I take?"}]


def _qa(question: str, chosen: str, rejected: str | None) -> dict:
    record = {"question": question, "response_chosen": chosen, "response_rejected": rejected}
    return {k: v for k, v in record.items() if v is not None}


@pytest.fixture(scope="module")
def shape_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("preference-shapes")
    return {
        "qa_responses": _jsonl(root / "qa_responses.jsonl", [
            _qa("高血压患者每天能吃多少盐？", "不超过5克。", "随便吃。"),
            _qa("孩子夜里咳嗽不停怎么办", "抬高枕头，多喝温水。", "不用管。")]),
        "qa_instruction": _jsonl(root / "qa_instruction.jsonl", [
            {"instruction": "把这句话翻译成英文", "input": "我头痛。", "chosen": "I have a headache.",
             "rejected": "My head.", "system": "你是翻译。",
             "history": [["你好", "你好，有什么可以帮你？"]]}]),
        "hh": _jsonl(root / "hh.jsonl", [
            {"chosen": [*HH_PREFIX, {"role": "assistant", "content": "Paracetamol, and drink water."}],
             "rejected": [*HH_PREFIX, {"role": "assistant", "content": "Whatever you have."}]}]),
        "prompt_text": _jsonl(root / "prompt_text.jsonl", [
            {"prompt": "What is the boiling point of water at sea level?", "chosen": "100 °C.",
             "rejected": "50 °C."},
            # line 2: the first question of qa_responses again: a duplicate across files
            {"prompt": "高血压患者每天能吃多少盐？", "chosen": "5克以内。", "rejected": "越多越好。"}]),
        "prompt_messages": _jsonl(root / "prompt_messages.jsonl", [
            {"prompt": [{"role": "system", "content": "Answer in one word."},
                        {"role": "user", "content": "Capital of France?"}],
             "chosen": [{"role": "assistant", "content": "Paris"}],
             "rejected": [{"role": "assistant", "content": "Lyon"}]}]),
        "bad": _jsonl(root / "bad.jsonl", [
            _qa("胃痛吃什么？", "清淡饮食。", "辣的。"),
            _qa("牙疼怎么办？", "看牙医。", "看牙医。"),  # identical answers
            {"conversations": [{"from": "human", "value": "你好"}], "chosen": "好", "rejected": "坏"},
            _qa("失眠怎么办？", "规律作息。", None),  # missing field
            _qa("贫血能跑步吗？", ["不能"], "能"),  # wrong type
            '{"question": "broken',  # line 6: invalid JSON
        ]),
    }


@pytest.fixture(scope="module")
def shapes_run(ray_local, tiny_tokenizer, shape_files, tmp_path_factory):  # noqa: ARG001 - starts Ray first
    out = tmp_path_factory.mktemp("preference-shapes-out") / "out"
    sources = [{"name": name, "path": str(path)} for name, path in shape_files.items()]
    sources[-1]["record_format"] = "pairwise_qa"  # its first record is one; every other line is quarantined
    return run_prepare_preference(_config(tiny_tokenizer, out, sources, max_length=256)), out


def _chosen_answers(manifest: Manifest, out: Path, tokenizer) -> dict[str, list[tuple[str, str]]]:
    """Per source: (decoded prompt, decoded chosen answer) of each of its pairs."""
    sources = {i: Path(record["path"]).stem for i, record in enumerate(manifest.inputs)}
    found: dict[str, list] = {}
    for _, keys, ((ids, labels), _) in _pairs(_rows(manifest, out)):
        prompt = _prompt_length(labels)
        found.setdefault(sources[keys[0] >> POSITION_BITS], []).append(
            (tokenizer.decode(ids[:prompt]), tokenizer.decode(ids[prompt:])))
    return found


def test_pairwise_qa_and_messages_pair_shapes_become_prompts_and_answers(shapes_run, tokenizer):
    manifest, out = shapes_run
    assert {i["source"]: i["record_format"] for i in manifest.inputs} == {
        "qa_responses": "pairwise_qa", "qa_instruction": "pairwise_qa", "hh": "messages_pair",
        "prompt_text": "messages_pair", "prompt_messages": "messages_pair", "bad": "pairwise_qa"}
    found = _chosen_answers(manifest, out, tokenizer)
    assert sorted(answer for _, answer in found["qa_responses"]) == ["不超过5克。</s>",
                                                                     "抬高枕头，多喝温水。</s>"]
    assert found["qa_instruction"] == [(
        ("你是翻译。</s>\n User: 你好</s>\n Assistant: 你好，有什么可以帮你？</s>\n User: "
         "把这句话翻译成英文\n我头痛。</s>\n Assistant: "), "I have a headache.</s>")]
    assert found["hh"] == [(
        ("User: Hi, I have a headache.</s>\n Assistant: Since when?</s>\n User: Since this morning. What "
         "should I take?</s>\n Assistant: "), "Paracetamol, and drink water.</s>")]
    assert found["prompt_text"] == [(
        "User: What is the boiling point of water at sea level?</s>\n Assistant: ", "100 °C.</s>")]
    assert found["prompt_messages"] == [(
        "Answer in one word.</s>\n User: Capital of France?</s>\n Assistant: ", "Paris</s>")]


def test_the_same_prompt_in_two_files_is_kept_once(shapes_run):
    manifest, _ = shapes_run
    counts = manifest.counts["sources"]
    assert counts["prompt_text"]["read"] == 2 and counts["prompt_text"]["kept_documents"] == 1
    assert counts["prompt_text"]["exact_duplicates"] == 1 and counts["qa_responses"]["kept_documents"] == 2


def test_records_that_cannot_be_used_are_quarantined_with_file_line_and_reason(shapes_run, shape_files):
    manifest, out = shapes_run
    bad = manifest.counts["sources"]["bad"]
    assert bad["read"] == 6 and bad["quarantined"] == 5 and bad["kept_documents"] == 1
    for row in manifest.counts["sources"].values():
        dropped = sum(row["filtered"].values()) + row["exact_duplicates"] + row["near_duplicates"]
        assert row["read"] == row["kept_documents"] + dropped + row["quarantined"]
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").open(encoding="utf-8")]
    assert {q["file"] for q in quarantined} == {str(shape_files["bad"])}
    reasons = {q["line"]: q["reason"] for q in quarantined}
    assert "chosen and rejected are identical" in reasons[2]
    assert "missing field 'question'" in reasons[3]  # read as pairwise_qa: it has no question
    assert "missing field 'response_rejected'" in reasons[4]
    assert "field 'response_chosen' is a list, not text" in reasons[5]
    assert "invalid JSON" in reasons[6]


@pytest.mark.usefixtures("ray_local")
def test_no_prompt_is_a_reason_of_its_own(tiny_tokenizer, tmp_path):
    path = _jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": "头痛怎么办？"}], "chosen": "休息。", "rejected": "忍"},
        {"conversations": [{"from": "system", "value": "你是医生"}], "chosen": "好", "rejected": "坏"}])
    manifest = run_prepare_preference(_config(tiny_tokenizer, tmp_path / "out", [{"path": str(path)}]))
    assert manifest.counts["sources"]["sharegpt"]["quarantined"] == 1
    [row] = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").open(encoding="utf-8")]
    assert (row["file"], row["line"]) == (str(path), 2)
    assert row["reason"] == "no prompt: no user turn before the answers"


@pytest.mark.usefixtures("ray_local")
def test_long_pairs_lose_the_start_of_their_prompt_and_are_counted(tiny_tokenizer, tokenizer, tmp_path):
    history = [[f"第{i}个问题：我头痛发热已经{i}天了，应该怎么办？", f"第{i}个回答：多喝水，注意休息。"]
               for i in range(10)]
    path = _jsonl(tmp_path / "long.jsonl", [
        {"instruction": "最后一个问题：需要去医院吗？", "chosen": "需要，尽快去。", "rejected": "不需要。",
         "history": history, "system": "你是医生。"},
        {"instruction": "短问题", "chosen": "短回答。", "rejected": "错。", "system": "长的系统提示。" * 60},
        {"instruction": "正常问题？", "chosen": "正常回答。", "rejected": "不回答。"},
    ])
    out = tmp_path / "out"
    manifest = run_prepare_preference(_config(tiny_tokenizer, out, [{"path": str(path)}], max_length=128))
    counts = manifest.counts["sources"]["long"]
    assert counts["truncated"] == 1 and counts["filtered"] == {"too_long": 1}  # line 2: its system prompt
    assert counts["kept_documents"] == 2
    [((ids, labels), _)] = [seqs for _, keys, seqs in _pairs(_rows(manifest, out))
                            if keys[0] & ((1 << POSITION_BITS) - 1) == 1]  # line 1: the long history
    prompt = _prompt_length(labels)
    assert len(ids) <= 128 and tokenizer.decode(ids[prompt:]) == "需要，尽快去。</s>"
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    turns = to_preference(first, "pairwise_qa").prompt.turns
    # the served prompt of the system prompt and the turns from a user turn on (the earlier ones dropped)
    kept = [i for i in range(0, len(turns), 2)
            if _served(tokenizer, Conversation(turns[i:], "你是医生。")) == ids[:prompt]]
    assert len(kept) == 1 and kept[0] > 0 and turns[kept[0]].role == "user"


@pytest.mark.usefixtures("ray_local")
def test_paired_and_kto_sources_cannot_be_mixed(tiny_tokenizer, shared_data, tmp_path):
    dpo, kto = (str(shared_data / "preference" / name)
                for name in ("toolcall_dpo_zh_demo.jsonl", "kto_en_demo.json"))
    with pytest.raises(ValueError, match=r"KTO \(unpaired\) sources \['k'\] and paired sources \['d'\] "
                                         "cannot be mixed"):  # record_format set: the config says so
        _config(tiny_tokenizer, tmp_path / "out",
                [{"name": "d", "path": dpo, "record_format": "sharegpt_pair"},
                 {"name": "k", "path": kto, "record_format": "kto"}])
    with pytest.raises(ConfigError, match=r"KTO \(unpaired\) sources \['k \(.*kto_en_demo.json: kto\)'\] "
                                          r"and paired sources \['d \(.*toolcall_dpo_zh_demo.jsonl: "
                                          r"sharegpt_pair\)'\]"):  # detected: the files say so
        run_prepare_preference(_config(tiny_tokenizer, tmp_path / "out",
                                       [{"name": "d", "path": dpo}, {"name": "k", "path": kto}]))
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_local")
def test_a_record_format_that_does_not_fit_names_the_file_line_and_field(shape_files):
    cfg = _config(Path("-"), Path("-"),
                  [{"name": "hh", "path": str(shape_files["hh"]), "record_format": "pairwise_qa"}])
    files = list_source_files(cfg.sources)
    with pytest.raises(ConfigError) as error:
        resolve_record_formats(files, [survey_source_file(f, 1 << 20) for f in files])
    assert str(error.value) == (
        f"sources.hh: record_format pairwise_qa does not fit {shape_files['hh']} line 1: missing field "
        "'question'; has ['chosen', 'rejected'] (the record looks like messages_pair); fix record_format: "
        "or map the names with fields:")


@pytest.mark.usefixtures("ray_local")
def test_an_output_without_pairs_is_an_error(tiny_tokenizer, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [_qa("q", "a", "a")])
    with pytest.raises(EmptyOutput, match="bad: read 1, quarantined 1"):
        run_prepare_preference(_config(tiny_tokenizer, tmp_path / "out", [{"path": str(path)}]))
    assert not (tmp_path / "out").exists()

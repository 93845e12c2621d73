"""prepare-sft end to end on a real local Ray with every shared SFT file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from lmforge.config import SFTDataConfig
from lmforge.data.files.sources import POSITION_BITS
from lmforge.data.stages.prepare_sft import SampleRenderer, run_prepare_sft
from lmforge.data.text.conversation import Conversation, Turn

SFT_FILES = {
    "medical": ["medical_sft_1K_format.jsonl"],
    "medical_dialogue": ["样例_内科5000-6000.csv"],
    "general_zh": ["sharegpt_zh_1K_format.jsonl"],
    "alpaca_zh": ["alpaca_zh_demo.json"],
    "advertise": ["AdvertiseGen_dev.json", "AdvertiseGen_fix_dev.json"],
    "identity": ["cognition_dev.json"],
}


def _config(tokenizer: Path, out: Path, sources: list[dict], **extra) -> SFTDataConfig:
    return SFTDataConfig.model_validate({
        "tokenizer": str(tokenizer), "output_dir": str(out), "sources": sources, **extra,
    })


@pytest.fixture(scope="module")
def all_files_run(
    ray_local,  # noqa: ARG001 - starts Ray first
    tiny_tokenizer, shared_data, tmp_path_factory,
):
    out = tmp_path_factory.mktemp("sft-all")
    sources = [{"name": name, "path": [str(shared_data / "sft" / f) for f in files]}
               for name, files in SFT_FILES.items()]
    return run_prepare_sft(_config(tiny_tokenizer, out, sources, max_length=1024)), out


def _rows(manifest, out: Path) -> list[dict]:
    return [
        row for shard in manifest.outputs["shards"] for row in pq.read_table(out / shard["file"]).to_pylist()
    ]


def _samples(rows: list[dict]):
    """(key, input_ids, labels, position_ids) of every sample of every packed row."""
    for row in rows:
        start = 0
        for key, length in zip(row["keys"], row["boundaries"], strict=True):
            end = start + length
            yield key, row["input_ids"][start:end], row["labels"][start:end], row["position_ids"][start:end]
            start = end


def _record_of(key: int, manifest) -> tuple[str, int]:
    """The input file and position a sample came from (key = file index << 40 | position;
    the line for CSV)."""
    return manifest.inputs[key >> POSITION_BITS]["path"], key & ((1 << POSITION_BITS) - 1)


def test_counts_reconcile_for_every_dataset(all_files_run):
    manifest, _ = all_files_run
    for name, row in manifest.counts["sources"].items():
        dropped = sum(row["filtered"].values()) + row["exact_duplicates"] + row["near_duplicates"]
        assert row["read"] == row["kept_documents"] + dropped + row["quarantined"], name
    assert manifest.counts["sources"]["alpaca_zh"]["read"] == 1000
    assert manifest.counts["sources"]["advertise"]["read"] == 200 + 1070
    assert manifest.counts["sources"]["medical_dialogue"]["read"] == 7644


def test_every_file_gets_its_record_format(all_files_run):
    manifest, _ = all_files_run
    formats = {Path(i["path"]).name: i["record_format"] for i in manifest.inputs}
    assert formats == {
        "medical_sft_1K_format.jsonl": "sharegpt", "样例_内科5000-6000.csv": "medical_csv",
        "sharegpt_zh_1K_format.jsonl": "sharegpt", "alpaca_zh_demo.json": "alpaca",
        "AdvertiseGen_dev.json": "advertisegen", "AdvertiseGen_fix_dev.json": "chatglm3",
        "cognition_dev.json": "chatglm3",
    }


def test_a_big_jsonl_file_is_read_in_chunks_with_every_record_once(all_files_run):
    manifest, _ = all_files_run
    sharegpt = next(i for i in manifest.inputs if Path(i["path"]).name == "sharegpt_zh_1K_format.jsonl")
    assert sharegpt["chunks"] > 1  # 4 MB of the run's 9.6 MB: chunks of 1.2 MB for 2 workers
    assert manifest.counts["sources"]["general_zh"]["read"] == 1000
    csv_input = next(i for i in manifest.inputs if i["path"].endswith(".csv"))
    assert csv_input["chunks"] == 1  # a CSV row may span lines: never cut


def test_same_ads_in_two_schemas_and_repeated_identities_are_deduplicated(all_files_run):
    manifest, _ = all_files_run
    advertise = manifest.counts["sources"]["advertise"]
    assert advertise["exact_duplicates"] + advertise["near_duplicates"] >= 200
    identity = manifest.counts["sources"]["identity"]
    assert identity["kept_documents"] <= 10 and identity["exact_duplicates"] >= 50
    alpaca = manifest.counts["sources"]["alpaca_zh"]
    assert alpaca["exact_duplicates"] >= 8  # the README's 8 exact duplicates


def test_trained_tokens_decode_to_exactly_the_assistant_texts(all_files_run, tiny_tokenizer, shared_data):
    manifest, out = all_files_run
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    alpaca = json.loads((shared_data / "sft" / "alpaca_zh_demo.json").read_text(encoding="utf-8"))
    alpaca_outputs = {record["output"].strip() for record in alpaca}
    csv_rows, start = {}, 2  # line 1 is the header; a row may span lines
    with (shared_data / "sft" / "样例_内科5000-6000.csv").open(encoding="gb18030", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            csv_rows[start], start = row, reader.line_num + 1
    checked = 0
    for key, ids, labels, _ in _samples(_rows(manifest, out)):
        path, line = _record_of(key, manifest)
        trained = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
        if path.endswith(".csv"):  # single turn: title + ask -> answer, Chinese intact through GBK
            row = csv_rows[line]
            assert trained == row["answer"].strip() + "</s>"
            assert tokenizer.decode(ids).startswith("User: " + row["title"].strip())
            checked += 1
        elif path.endswith("alpaca_zh_demo.json"):
            assert trained.removesuffix("</s>") in alpaca_outputs
            checked += 1
    assert checked > 1000


def test_packed_rows_keep_samples_whole_with_restarting_positions(all_files_run):
    manifest, out = all_files_run
    rows = _rows(manifest, out)
    assert all(len(r["input_ids"]) == len(r["labels"]) == sum(r["boundaries"]) <= 1024 for r in rows)
    samples = list(_samples(rows))
    assert len(samples) == manifest.outputs["samples"] == manifest.counts["total"]["output_documents"]
    assert all(positions == list(range(len(ids))) for _, ids, _, positions in samples)
    assert all(labels[-1] != -100 for _, _, labels, _ in samples)  # every sample ends on a trained EOS


def test_utilisation_and_trained_share_are_reported(all_files_run):
    manifest, _ = all_files_run
    assert manifest.outputs["utilisation"] >= 0.95
    assert 0 < manifest.outputs["trained_token_share"] < 1
    assert "Assistant: " in manifest.outputs["chat_template"]
    assert manifest.outputs["eos_token_id"] is not None


@pytest.fixture(scope="module")
def planted_sft_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("planted-sft") / "bad.jsonl"
    lines = [
        {
            "conversations": [
                {"role": "user", "content": "头痛怎么办？"},
                {"role": "assistant", "content": "多休息。"},
            ]
        },
        '{"conversations": [',  # line 2: broken JSON
        {"conversations": [{"role": "user", "content": "发热？"}, {"role": "assistant", "content": "  "}]},
        {
            "conversations": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        {"messages": [{"role": "user", "content": "x"}]},  # line 5: another schema, no assistant
    ]
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)
                              for line in lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.usefixtures("ray_local")
def test_bad_records_land_in_quarantine_with_line_and_reason(tiny_tokenizer, planted_sft_file, tmp_path):
    manifest = run_prepare_sft(
        _config(tiny_tokenizer, tmp_path, [{"name": "bad", "path": str(planted_sft_file)}], max_length=256)
    )
    counts = manifest.counts["sources"]["bad"]
    assert counts["read"] == 5 and counts["quarantined"] == 4 and counts["kept_documents"] == 1
    reasons = {r["line"]: r["reason"] for r in map(json.loads, (tmp_path / "quarantine.jsonl").open())}
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "invalid JSON" in reasons[2] and "empty assistant" in reasons[3] and "out of order" in reasons[4]


@pytest.mark.usefixtures("ray_local")
def test_tokenizer_template_trains_only_assistant_turns(tiny_tokenizer, shared_data, tmp_path):
    manifest = run_prepare_sft(
        _config(
            tiny_tokenizer,
            tmp_path,
            [{"name": "identity", "path": str(shared_data / "sft" / "cognition_dev.json")}],
            template="tokenizer",
            max_length=256,
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    answers = {json.loads(line)["conversations"][1]["content"].strip()
               for line in (shared_data / "sft" / "cognition_dev.json").open(encoding="utf-8")}
    samples = list(_samples(_rows(manifest, tmp_path)))
    assert len(samples) == manifest.counts["sources"]["identity"]["output_documents"] > 0
    for _, ids, labels, _ in samples:
        trained = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
        assert trained.removesuffix("</s>") in answers


def test_rendered_rows_of_dropped_conversations_are_empty_and_say_why(tiny_tokenizer):
    conversations = [
        Conversation([Turn("user", "头痛怎么办？"), Turn("assistant", "多休息。")]),
        Conversation([Turn("user", "发热？" * 50), Turn("assistant", "多喝水。" * 50)]),
        Conversation([Turn("user", "没有回答")]),
    ]
    batch = pa.table({"key": [1, 2, 3], "chunk": [0, 0, 0], "source": ["s"] * 3,
                      "text": [c.to_json() for c in conversations]})
    rows = SampleRenderer(str(tiny_tokenizer), "classic", max_length=64)(batch).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "filtered:too_long", "filtered:no_trained_turn"]
    assert rows[0]["n_tokens"] == len(rows[0]["input_ids"]) > rows[0]["n_trained"] > 0
    assert all(r["input_ids"] == r["labels"] == [] and r["n_tokens"] == r["n_trained"] == 0 for r in rows[1:])


def test_the_output_dir_has_a_sample_length_histogram_and_the_mixture_shares_as_pictures(all_files_run):
    manifest, out = all_files_run
    assert all((out / name).stat().st_size > 1000 for name in manifest.outputs["plots"])

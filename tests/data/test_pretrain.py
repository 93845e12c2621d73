"""prepare-pretrain end to end on a real local Ray with the shared sample files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from lmforge.config import ConfigError, PretrainDataConfig, SourceConfig, load_config
from lmforge.data.stages.prepare_pretrain import run_prepare_pretrain
from lmforge.data.steps.clean import clean_text, rejection_reason
from lmforge.manifest import Manifest

CSV_NAME = "样例_内科5000-6000.csv"


def _config(tokenizer: Path, out: Path, sources: list[dict], **extra) -> PretrainDataConfig:
    return PretrainDataConfig.model_validate({
        "tokenizer": str(tokenizer), "output_dir": str(out), "sources": sources,
        "pack": {"block_size": 256, "blocks_per_shard": 64}, **extra,
    })


def _long_fever_paragraph(shared_data: Path) -> tuple[int, str]:
    lines = (shared_data / "pretrain" / "fever.txt").read_text(encoding="utf-8").split("\n")
    return next((i + 1, line) for i, line in enumerate(lines) if len(line) > 600)


@pytest.fixture(scope="module")
def planted_file(tmp_path_factory, shared_data) -> Path:
    """A near-duplicate of a fever paragraph, an unrelated document, and four broken records."""
    _, paragraph = _long_fever_paragraph(shared_data)
    near_copy = paragraph[:100] + "甲" + paragraph[101:300] + "乙" + paragraph[301:]
    path = tmp_path_factory.mktemp("planted") / "planted.jsonl"
    with path.open("wb") as f:
        f.write(json.dumps({"text": near_copy}, ensure_ascii=False).encode() + b"\n")  # line 1
        f.write(json.dumps({"text": "Completely unrelated: the ferry leaves the harbour at "
                                    "seven, weather permitting, every day of the week."}).encode() + b"\n")
        f.write(b'{"text": "unterminated\n')  # line 3: invalid JSON
        f.write(b'{"body": "no text field here"}\n')  # line 4: missing field
        f.write(b'["a list, not an object"]\n')  # line 5
        f.write(b'{"text": "bad bytes \xff\xfe here"}\n')  # line 6: not UTF-8
    return path


@pytest.fixture(scope="module")
def mixed_run(
    ray_local,  # noqa: ARG001 - starts Ray first
    tiny_tokenizer, shared_data, planted_file, tmp_path_factory,
):
    out = tmp_path_factory.mktemp("mixed")
    pretrain = shared_data / "pretrain"
    cfg = _config(tiny_tokenizer, out, [
        {"name": "fever", "path": str(pretrain / "fever.txt"), "weight": 2},
        {"name": "c4", "path": str(pretrain / "c4_demo.jsonl"), "weight": 1},
        {"name": "wiki", "path": str(pretrain / "wiki_demo.txt"), "weight": 1},
        {"name": "planted", "path": str(planted_file), "weight": 0.2},
    ])
    return run_prepare_pretrain(cfg), out


@pytest.fixture(scope="module")
def csv_runs(ray_local, tiny_tokenizer, shared_data, tmp_path_factory):  # noqa: ARG001 - starts Ray first
    """The GBK medical CSV alone (mixture factor 1), prepared twice into two directories."""
    runs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(f"csv-{name}")
        cfg = _config(tiny_tokenizer, out, [{"name": "dialogue", "path": str(shared_data / "sft" / CSV_NAME),
                                              "template": "medical_csv"}])
        runs.append((run_prepare_pretrain(cfg), out))
    return runs


def test_fever_exact_duplicate_lines_are_removed(mixed_run):
    manifest, out = mixed_run
    fever = manifest.counts["sources"]["fever"]
    # the README's 4 repeated lines, plus headings equal once normalised
    assert fever["exact_duplicates"] >= 4
    clusters = [json.loads(line) for line in (out / "dedup_clusters.jsonl").read_text().splitlines()]
    fever_clusters = [c for c in clusters if c["kept"]["source"] == "fever"]
    # the first occurrence in the file is the copy kept
    assert fever_clusters and all(
        d["line"] > c["kept"]["line"]
        for c in fever_clusters
        for d in c["duplicates"]
        if d["source"] == "fever"
    )


def test_counts_reconcile_for_every_source(mixed_run, shared_data):
    manifest, _ = mixed_run
    for name, row in manifest.counts["sources"].items():
        dropped = sum(row["filtered"].values()) + row["exact_duplicates"] + row["near_duplicates"]
        assert row["read"] == row["kept_documents"] + dropped + row["quarantined"], name
    fever_lines = (shared_data / "pretrain" / "fever.txt").read_text(encoding="utf-8").split("\n")
    assert manifest.counts["sources"]["fever"]["read"] == sum(1 for line in fever_lines if line.strip())
    assert manifest.counts["sources"]["c4"]["read"] == 300
    assert manifest.counts["sources"]["wiki"]["read"] == 30


def test_sources_are_mixed_by_weight(mixed_run):
    manifest, _ = mixed_run
    sources = manifest.counts["sources"]
    assert sources["fever"]["requested_share"] == pytest.approx(2 / 4.2)
    for name in ("fever", "c4", "wiki"):
        # whole documents are repeated or sampled, so shares match up to document granularity
        assert sources[name]["achieved_share"] == pytest.approx(sources[name]["requested_share"], abs=0.05), (
            name
        )
    assert sources["fever"]["mix_factor"] > 1 > sources["wiki"]["mix_factor"]  # fever up-, wiki down-sampled
    total_blocks_tokens = manifest.outputs["tokens"] + manifest.outputs["dropped_remainder_tokens"]
    assert total_blocks_tokens == sum(s["output_tokens"] for s in sources.values())


def test_near_duplicate_is_removed_and_unrelated_document_kept(mixed_run, planted_file):
    manifest, out = mixed_run
    planted = manifest.counts["sources"]["planted"]
    assert planted["near_duplicates"] == 1
    assert planted["kept_documents"] == 1  # the unrelated document
    clusters = [json.loads(line) for line in (out / "dedup_clusters.jsonl").read_text().splitlines()]
    assert any(d["file"] == str(planted_file) and d["line"] == 1 and c["kept"]["source"] == "fever"
               for c in clusters for d in c["duplicates"])


def test_malformed_records_land_in_quarantine_with_reasons(mixed_run, planted_file):
    manifest, out = mixed_run
    assert manifest.counts["sources"]["planted"]["quarantined"] == 4
    rows = [json.loads(line) for line in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    by_line = {r["line"]: r for r in rows if r["file"] == str(planted_file)}
    assert sorted(by_line) == [3, 4, 5, 6]
    assert "invalid JSON" in by_line[3]["reason"]
    assert "missing field" in by_line[4]["reason"]
    assert "not an object" in by_line[5]["reason"]
    assert "undecodable" in by_line[6]["reason"]


def test_blocks_keep_document_boundaries(mixed_run, tiny_tokenizer):
    manifest, out = mixed_run
    eos = AutoTokenizer.from_pretrained(str(tiny_tokenizer)).eos_token_id
    table = pq.read_table(out / manifest.outputs["shards"][0]["file"])
    for ids, lens in zip(
        table.column("input_ids").to_pylist()[:50], table.column("doc_lens").to_pylist()[:50], strict=True
    ):
        assert len(ids) == 256 and sum(lens) == 256
        ends = [sum(lens[: i + 1]) - 1 for i in range(len(lens))]
        assert all(ids[e] == eos for e in ends[:-1])  # every piece but a block's last ends its document


def _csv_documents(shared_data: Path) -> list[str]:
    """The CSV's rows as prepare-pretrain renders and cleans them, in file order, before dedup."""
    cfg = PretrainDataConfig.model_validate({"tokenizer": "-", "output_dir": "-", "sources": [{"path": "-"}]})
    with (shared_data / "sft" / CSV_NAME).open(encoding="gb18030", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [clean_text(f"{r['title']}\n{r['ask']}\n{r['answer']}", cfg.clean) for r in rows]
    return [t for t in texts if rejection_reason(t, cfg.clean) is None]


def test_packing_is_lossless_and_in_order(csv_runs, tiny_tokenizer, shared_data):
    manifest, out = csv_runs[0]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    eos = tokenizer.eos_token_id
    stream = [t for shard in manifest.outputs["shards"]
              for ids in pq.read_table(out / shard["file"]).column("input_ids").to_pylist() for t in ids]
    assert len(stream) == manifest.outputs["blocks"] * 256
    # The stream is the kept documents, whole, EOS-terminated, in file order (dedup removed the
    # rest); the last one runs into the dropped remainder.
    candidates = (
        tokenizer.encode(text, add_special_tokens=False) + [eos] for text in _csv_documents(shared_data)
    )
    matched, position = 0, 0
    for document in candidates:
        if stream[position : position + len(document)] == document:
            matched, position = matched + 1, position + len(document)
        elif (
            position + len(document) > len(stream) and stream[position:] == document[: len(stream) - position]
        ):
            tail = len(document) - (len(stream) - position)
            break
    else:
        tail = 0
    assert position == len(stream) or tail, f"document {matched} of the stream is not the next CSV row"
    counts = manifest.counts["sources"]["dialogue"]
    assert counts["mix_factor"] == 1.0
    assert matched + (1 if tail else 0) == counts["kept_documents"]
    assert manifest.outputs["dropped_remainder_tokens"] == tail


def test_gbk_csv_chinese_text_round_trips(csv_runs, tiny_tokenizer):
    manifest, out = csv_runs[0]
    assert manifest.inputs[0]["encoding"] == "gb18030"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    first_block = pq.read_table(out / manifest.outputs["shards"][0]["file"]).column("input_ids")[0].as_py()
    assert tokenizer.decode(first_block).startswith("高血压患者能吃党参吗？\n我有高血压这两天女婿来的时候")


def test_two_runs_give_byte_identical_shards(csv_runs):
    (first, first_dir), (second, second_dir) = csv_runs
    assert [s["sha256"] for s in first.outputs["shards"]] == [s["sha256"] for s in second.outputs["shards"]]
    for shard in first.outputs["shards"]:
        assert (first_dir / shard["file"]).read_bytes() == (second_dir / shard["file"]).read_bytes()
    assert Manifest.read(second_dir).outputs["blocks"] == first.outputs["blocks"]


def test_config_typo_fails_naming_the_field(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text("tokenizer: t\noutput_dir: o\nsources:\n  - path: a.txt\n    wieght: 2\n")
    with pytest.raises(
        ConfigError, match=r"(?s)pretrain.yaml.*sources\.0\.wieght: unknown key \(did you mean 'weight'\?\)"
    ):
        load_config(PretrainDataConfig, config)


def test_missing_input_file_fails_before_any_work(tmp_path, tiny_tokenizer):
    cfg = _config(tiny_tokenizer, tmp_path / "out", [{"path": str(tmp_path / "nope-*.jsonl")}])
    with pytest.raises(ConfigError, match=r"sources\.0\.path: '.*nope-\*\.jsonl' matches no file"):
        run_prepare_pretrain(cfg)
    assert not (tmp_path / "out").exists()


def test_source_names_default_to_file_stems():
    source = SourceConfig(path="/data/fever.txt")
    assert source.name == "fever"


def test_the_output_dir_has_a_document_length_histogram_and_the_mixture_shares_as_pictures(mixed_run):
    manifest, out = mixed_run
    assert manifest.outputs["plots"] == ["token_lengths.png", "mixture.png"]
    assert all((out / name).stat().st_size > 1000 for name in manifest.outputs["plots"])

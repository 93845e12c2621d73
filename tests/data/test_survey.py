"""survey: files -> size, sha256, encoding, format and chunks that read the same as the whole file."""

from __future__ import annotations

import hashlib
import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from file_helpers import GBK_CSV, read_all, write

from lmforge.data.files.records import read_chunk
from lmforge.data.files.survey import UnreadableFile, detect_encoding, infer_format, survey_file

# --- real sample data -------------------------------------------------------------------------------


def test_gbk_csv_is_detected_as_gb18030_and_chinese_round_trips(shared_data):
    path = shared_data / GBK_CSV
    assert detect_encoding(str(path)) == "gb18030"
    first = read_all(path)[0]
    assert first.line == 2
    assert first.fields["department"] == "心血管科"
    assert first.fields["title"] == "高血压患者能吃党参吗？"


def test_survey_records_size_and_sha256_of_the_file_bytes(shared_data):
    path = shared_data / "sft/alpaca_zh_demo.json"
    survey = survey_file(str(path))
    assert survey.size == path.stat().st_size
    assert survey.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_json_file_that_holds_json_lines_is_read_as_jsonl(shared_data):
    path = shared_data / "sft/AdvertiseGen_dev.json"
    assert survey_file(str(path)).format == "jsonl"
    assert [sorted(r.fields) for r in read_all(path)] == [["content", "summary"]] * 200


# --- chunks -----------------------------------------------------------------------------------------


def test_text_file_read_in_small_chunks_equals_one_chunk(shared_data):
    path = shared_data / "pretrain/fever.txt"
    assert len(survey_file(str(path), chunk_bytes=4096).chunks) > 50
    assert read_all(path, chunk_bytes=4096) == read_all(path)


def test_chunk_first_line_counts_the_newlines_before_it(shared_data):
    path = shared_data / "pretrain/c4_demo.jsonl"
    data = path.read_bytes()
    chunks = survey_file(str(path), chunk_bytes=10_000).chunks
    assert [c.first_line for c in chunks] == [data.count(b"\n", 0, c.start) + 1 for c in chunks]
    assert all(data[c.start - 1:c.start] == b"\n" for c in chunks[1:])
    assert chunks[-1].end == len(data) and all(a.end == b.start for a, b in itertools.pairwise(chunks))


def test_chunk_boundaries_are_the_same_on_every_survey(shared_data):
    path = str(shared_data / "sft/sharegpt_zh_1K_format.jsonl")
    assert survey_file(path, chunk_bytes=50_000) == survey_file(path, chunk_bytes=50_000)


def test_paragraph_chunks_start_after_a_blank_line_and_read_the_same(tmp_path):
    paragraphs = [f"段落{i}\n" + "内容 " * (i % 7 + 1) + "\n" + ("\n" * (i % 3)) for i in range(300)]
    path = write(tmp_path, "paras.md", "\n".join(paragraphs).encode())
    chunks = survey_file(str(path), chunk_bytes=500, text_unit="paragraph").chunks
    data = path.read_bytes()
    assert len(chunks) > 10
    assert all(data[:c.start].endswith(b"\n\n") for c in chunks[1:])
    assert read_all(path, text_unit="paragraph", chunk_bytes=500) == read_all(path, text_unit="paragraph")


def test_parquet_gives_one_chunk_per_row_group_numbering_rows_across_the_file(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": [f"row {i}\r\n" for i in range(10)]}), path, row_group_size=4)
    survey = survey_file(str(path))
    assert [(c.start, c.end, c.first_line) for c in survey.chunks] == [(0, 1, 1), (1, 2, 5), (2, 3, 9)]
    records = [r for c in survey.chunks for r in read_chunk(c)]
    assert [(r.line, r.fields["text"]) for r in records] == [(i + 1, f"row {i}\n") for i in range(10)]


# --- encodings --------------------------------------------------------------------------------------


def test_utf8_bom_is_detected_and_kept_out_of_the_first_record(tmp_path):
    path = write(tmp_path, "bom.txt", "\ufeff第一行\nsecond\n".encode())
    survey = survey_file(str(path))
    assert survey.encoding == "utf-8-sig"
    assert [r.fields["text"] for r in read_all(path)] == ["第一行", "second"]


def test_gb18030_text_file_is_detected_and_read_right(tmp_path):
    lines = ["发热是常见症状。", "体温超过37.3℃即为发热。", "𠀀 needs four bytes in GB18030."]
    path = write(tmp_path, "zh.txt", "\n".join(lines).encode("gb18030"))
    assert survey_file(str(path)).encoding == "gb18030"
    assert [r.fields["text"] for r in read_all(path)] == lines


def test_utf8_file_with_a_few_broken_lines_stays_utf8_and_flags_them(tmp_path):
    good = [f"第{i}行：发热的病因与诊断。" for i in range(50)]
    data = "\n".join(good).encode() + b"\nbroken \xb7\xa2\xc8\xc8 \xff\n" + "最后一行\n".encode()
    path = write(tmp_path, "mixed.txt", data)
    records = read_all(path)
    assert survey_file(str(path)).encoding == "utf-8"
    assert [(r.line, r.error) for r in records if r.error] == [(51, "undecodable bytes as utf-8")]
    assert records[-1].fields == {"text": "最后一行"} and records[-1].line == 52


def test_encoding_is_the_one_that_decodes_more_lines_of_the_whole_file(tmp_path):
    def lines(count):  # ~40 bytes a line, so both files span several 1 MiB read blocks
        return "".join(f"第{i}行：发热的病因与诊断，体温升高。\n" for i in range(count))

    gbk_then_more_utf8 = lines(30_000).encode("gbk") + lines(60_000).encode()
    gbk_then_less_utf8 = lines(60_000).encode("gbk") + lines(30_000).encode()
    assert detect_encoding(str(write(tmp_path, "a.txt", gbk_then_more_utf8))) == "utf-8"
    assert detect_encoding(str(write(tmp_path, "b.txt", gbk_then_less_utf8))) == "gb18030"


# --- whole-file failures ----------------------------------------------------------------------------


def test_missing_file_raises_unreadable_file_naming_the_path(tmp_path):
    path = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(UnreadableFile, match="nowhere.jsonl"):
        survey_file(path)


def test_corrupt_parquet_raises_unreadable_file(tmp_path):
    path = write(tmp_path, "broken.parquet", b"not a parquet file at all")
    with pytest.raises(UnreadableFile, match="broken.parquet"):
        survey_file(str(path))


def test_unknown_extension_raises_value_error_naming_the_file():
    with pytest.raises(ValueError, match=r"notes\.docx.*set format: explicitly"):
        infer_format("/data/notes.docx")


# --- shapes the extension does not tell ---------------------------------------------------------------


def _pretty_objects(records, between="\n"):
    return between.join(json.dumps(r, ensure_ascii=False, indent=2) for r in records).encode()


def test_pretty_printed_json_objects_back_to_back_are_read_as_a_stream_of_objects(tmp_path):
    records = [
        {"instruction": "发热怎么办？", "output": "多喝水。"},
        {"instruction": "咳嗽？", "output": "看医生。"},
    ]
    path = write(tmp_path, "objects.json", _pretty_objects(records))
    survey = survey_file(str(path))
    assert survey.format == "json_objects" and "back to back" in survey.detected
    assert [(r.line, r.position, r.fields) for r in read_all(path)] == [
        (1, 1, records[0]),
        (5, 2, records[1]),
    ]


def test_json_objects_with_commas_or_nothing_between_them_are_all_read(tmp_path):
    records = [{"a": i} for i in range(4)]
    with_commas = write(tmp_path, "commas.jsonl", _pretty_objects(records, ",\n"))
    touching = write(tmp_path, "touching.json", _pretty_objects(records, ""))
    assert [r.fields for r in read_all(with_commas)] == records
    assert [r.fields for r in read_all(touching)] == records


def test_json_lines_whose_first_line_is_broken_stay_json_lines(tmp_path):
    path = write(tmp_path, "rows.jsonl", b'{"a": 1 "b": 2}\n{"a": 2}\n')
    assert survey_file(str(path)).format == "jsonl"
    assert [r.fields for r in read_all(path)] == [None, {"a": 2}]


def test_json_lines_in_a_txt_file_are_read_as_records_and_the_survey_says_so(tmp_path):
    data = '{"问": "发热怎么办？", "答": "多喝水。"}\n\n{"问": "咳嗽？", "答": "看医生。"}\n'.encode()
    path = write(tmp_path, "qa.txt", data)
    survey = survey_file(str(path))
    assert (survey.format, survey.detected) == ("jsonl", "JSON Lines in a text file")
    assert [(r.line, r.fields["问"]) for r in read_all(path)] == [(1, "发热怎么办？"), (3, "咳嗽？")]


def test_a_txt_file_set_to_format_text_keeps_its_json_lines_as_text(tmp_path):
    path = write(tmp_path, "qa.txt", b'{"q": "a"}\n{"q": "b"}\n')
    assert survey_file(str(path), "text").format == "text"
    assert [r.fields for r in read_all(path, "text")] == [{"text": '{"q": "a"}'}, {"text": '{"q": "b"}'}]


def test_a_txt_file_with_prose_among_json_lines_stays_text(tmp_path):
    path = write(tmp_path, "notes.txt", b'{"q": "a"}\nplain words\n{"q": "b"}\n')
    assert survey_file(str(path)).format == "text"


def test_question_and_answer_blocks_between_blank_lines_are_one_document_each(tmp_path):
    blocks = [f"问题{i}：发热怎么办？\n回答{i}：多喝水，注意休息。" for i in range(5)]
    path = write(tmp_path, "qa.txt", "\n\n\n".join(blocks).encode())
    survey = survey_file(str(path))
    assert survey.text_unit == "paragraph" and survey.detected.startswith("text_unit paragraph")
    assert [r.fields["text"] for r in read_all(path, text_unit="auto")] == blocks


def test_hard_wrapped_english_paragraphs_are_one_document_each(tmp_path):
    paragraph = "\n".join(
        ["The quick brown fox jumps over the lazy dog and keeps running until"] * 11 + ["done."]
    )
    path = write(tmp_path, "essay.txt", "\n\n".join([paragraph] * 3).encode())
    assert survey_file(str(path)).text_unit == "paragraph"
    assert [r.fields["text"] for r in read_all(path, text_unit="auto")] == [paragraph] * 3


def test_single_lines_between_blank_lines_stay_one_document_per_line(tmp_path):
    path = write(tmp_path, "lines.txt", b"one document.\n\nanother one.\n\nand a third.\n")
    assert survey_file(str(path)).text_unit == "line"


def test_shared_textbook_and_wiki_texts_stay_one_document_per_line(shared_data):
    for name in ("fever.txt", "wiki_demo.txt"):
        survey = survey_file(str(shared_data / "pretrain" / name))
        assert (survey.format, survey.text_unit) == ("text", "line"), survey.detected


def test_an_explicit_text_unit_is_kept_whatever_the_file_looks_like(tmp_path):
    path = write(tmp_path, "qa.txt", b"q one\na one\n\nq two\na two\n")
    assert survey_file(str(path), text_unit="line").text_unit == "line"
    assert survey_file(str(path), text_unit="line").detected is None
    assert len(read_all(path, text_unit="line")) == 4


def test_paragraph_chunks_found_by_auto_carry_their_unit_and_read_the_same(tmp_path):
    blocks = [f"问题{i}\n回答{i}，" + "内容 " * (i % 7 + 1) for i in range(300)]
    path = write(tmp_path, "qa.txt", "\n\n".join(blocks).encode())
    chunks = survey_file(str(path), chunk_bytes=500).chunks
    assert len(chunks) > 10 and {c.text_unit for c in chunks} == {"paragraph"}
    assert read_all(path, text_unit="auto", chunk_bytes=500) == read_all(path, text_unit="paragraph")

"""readers: chunks -> raw records, with exact line numbers and per-record errors."""

from __future__ import annotations

import csv
import io
import json

from file_helpers import GBK_CSV, read_all, write

from lmforge.data.files.survey import survey_file

# --- real sample data -------------------------------------------------------------------------------


def test_gbk_csv_gives_one_record_per_data_row(shared_data):
    path = shared_data / GBK_CSV
    expected = list(csv.DictReader(io.StringIO(path.read_bytes().decode("gbk"), newline="")))
    records = read_all(path)
    assert [r.error for r in records if r.error] == []
    assert [r.fields for r in records] == expected


def test_text_file_gives_one_record_per_non_blank_line(shared_data):
    path = shared_data / "pretrain/fever.txt"
    lines = path.read_text(encoding="utf-8").split("\n")
    expected = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    assert [(r.line, r.fields["text"]) for r in read_all(path)] == expected


def test_jsonl_gives_one_object_per_line(shared_data):
    records = read_all(shared_data / "pretrain/c4_demo.jsonl")
    assert len(records) == 300
    assert all(isinstance(r.fields["text"], str) and r.error is None for r in records)


def test_crlf_json_array_gives_its_objects_without_carriage_returns(shared_data):
    path = shared_data / "eval/CMB-test-qa.json"
    survey = survey_file(str(path))
    records = read_all(path)
    assert survey.format == "json" and len(survey.chunks) == 1
    assert len(records) == 74 and all(r.error is None for r in records)
    assert records[0].line == 2
    assert "\r" not in json.dumps([r.fields for r in records], ensure_ascii=False).replace("\\r", "\r")


def test_carriage_returns_become_newlines_in_text_records(tmp_path):
    path = write(tmp_path, "crlf.txt", b"one\r\ntwo\rhalf\r\n")
    assert [r.fields["text"] for r in read_all(path)] == ["one", "two\nhalf"]


# --- bad records ------------------------------------------------------------------------------------


def test_bad_jsonl_lines_become_error_records_and_good_lines_still_parse(tmp_path):
    data = b'{"a": 1}\n{"a": 2 "b": 3}\n\n[1, 2]\n{"a": "\xff\xfe"}\n{"a": 6}\n'
    records = read_all(write(tmp_path, "bad.jsonl", data))
    assert [(r.line, r.fields, r.error) for r in records] == [
        (1, {"a": 1}, None),
        (2, None, "invalid JSON: Expecting ',' delimiter (column 9)"),
        (4, None, "JSON value is a list, not an object"),
        (5, None, "undecodable bytes as utf-8"),
        (6, {"a": 6}, None),
    ]
    assert records[1].raw == '{"a": 2 "b": 3}'


def test_malformed_json_array_gives_one_error_naming_line_and_column(tmp_path):
    data = b'[\n  {"a": 1},\n  {"a": 2},\n  {"a" 3},\n  {"a": 4}\n]\n'
    records = read_all(write(tmp_path, "bad.json", data))
    assert [r.fields for r in records[:2]] == [{"a": 1}, {"a": 2}]
    assert [r.line for r in records] == [2, 3, 4]
    assert records[2].error.startswith("invalid JSON array: Expecting ':' delimiter (line 4, column 8)")
    assert records[2].raw == '  {"a" 3},'


def test_undecodable_bytes_spoil_only_their_own_json_array_element(tmp_path):
    records = read_all(write(tmp_path, "bytes.json", b'[{"a": "ok"},\n {"a": "\xff"},\n {"a": "fine"}]'))
    assert [(r.line, r.fields, r.error) for r in records] == [
        (1, {"a": "ok"}, None), (2, None, "undecodable bytes as utf-8"), (3, {"a": "fine"}, None)
    ]
    assert records[1].raw == '{"a": "\ufffd"}'


def test_json_array_element_that_is_not_an_object_is_an_error_record(tmp_path):
    records = read_all(write(tmp_path, "mixed.json", b'[{"a": 1},\n "text",\n {"a": 3}]'))
    assert [(r.line, r.error) for r in records] == [
        (1, None), (2, "JSON value is a string, not an object"), (3, None)
    ]


def test_a_malformed_object_in_a_stream_names_its_line_and_ends_the_file(tmp_path):
    data = b'{\n  "a": 1\n}\n{\n  "a" 2\n}\n{\n  "a": 3\n}\n'
    records = read_all(write(tmp_path, "bad.json", data))
    assert [(r.line, r.fields) for r in records] == [(1, {"a": 1}), (5, None)]
    assert records[1].error.startswith("invalid JSON object stream: Expecting ':' delimiter (line 5, column")
    assert records[1].error.endswith("rest of file skipped")


def test_csv_row_with_a_missing_field_is_an_error_record(tmp_path):
    data = "department,title,ask,answer\n内科,标题,问,答\n内科,标题,问\n外科,t,a,b\n".encode()
    records = read_all(write(tmp_path, "rows.csv", data))
    assert [(r.line, r.error) for r in records] == [
        (2, None), (3, "expected 4 CSV fields (department,title,ask,answer), got 3"), (4, None)
    ]
    assert records[1].raw == "内科,标题,问"


def test_csv_row_spanning_lines_keeps_its_start_line(tmp_path):
    data = b'q,a\r\n"two\r\nlines",x\r\ny,z\r\n'
    records = read_all(write(tmp_path, "multi.csv", data))
    assert [(r.line, r.fields) for r in records] == [
        (2, {"q": "two\nlines", "a": "x"}), (4, {"q": "y", "a": "z"})
    ]


def test_tsv_is_split_on_tabs(tmp_path):
    records = read_all(write(tmp_path, "rows.tsv", b"q\ta\nwhat, then\tthis\n"))
    assert records[0].fields == {"q": "what, then", "a": "this"}


# --- paragraphs -------------------------------------------------------------------------------------


def test_paragraphs_split_on_blank_lines_and_start_at_their_first_line(tmp_path):
    data = b"\nfirst para\nstill first\n\n  \nsecond\n\n\nthird\nend"
    records = read_all(write(tmp_path, "doc.txt", data), text_unit="paragraph")
    assert [(r.line, r.fields["text"]) for r in records] == [
        (2, "first para\nstill first"), (6, "second"), (9, "third\nend")
    ]


def test_json_array_records_are_numbered_by_element_whatever_their_lines(tmp_path):
    records = read_all(write(tmp_path, "lines.json", b'[{"a": 1}, {"a": 2},\n {"a": 3}, {"a" 4}]'))
    assert [(r.line, r.position) for r in records] == [(1, 1), (1, 2), (2, 3), (2, 4)]
    assert records[-1].error.startswith("invalid JSON array")


def test_line_based_records_are_positioned_at_their_line(tmp_path):
    records = read_all(write(tmp_path, "rows.jsonl", b'{"a": 1}\n\n{"a": 2}\n'))
    assert [(r.line, r.position) for r in records] == [(1, 1), (3, 3)]

"""Sources: globs expand to files numbered in corpus order, which record keys are built from."""

import json

import pytest

from lmforge.config import SourceConfig
from lmforge.data.files.sources import (
    key_file_index,
    list_source_files,
    plan_chunks,
    read_records,
    record_key,
    survey_source_file,
)


def test_files_of_a_glob_and_of_later_sources_get_distinct_consecutive_numbers(tmp_path):
    for name in ("a1.txt", "a2.txt", "b.txt"):
        (tmp_path / name).write_text("text\n")
    files = list_source_files([SourceConfig(name="a", path=str(tmp_path / "a*.txt")),
                               SourceConfig(name="b", path=str(tmp_path / "b.txt"))])
    assert [f.file_index for f in files] == [0, 1, 2]
    assert [f.source.name for f in files] == ["a", "a", "b"]


def test_a_record_key_orders_by_file_then_line_and_gives_the_file_back():
    assert record_key(1, 5) > record_key(0, 10**9)
    assert key_file_index(record_key(7, 123)) == 7


def _rows(source: SourceConfig) -> list[dict]:
    files = list_source_files([source])
    surveys = [survey_source_file(file, 1024**2) for file in files]
    return [row for planned in plan_chunks(files, surveys) for row in read_records(planned)]


def test_a_json_array_on_one_line_gives_every_record_its_own_key_in_file_order(tmp_path):
    records = [{"text": "a"}, {"text": "b"}, {"text": "b"}, {"text": "c"}, {"text": "d"}]
    path = tmp_path / "one_line.json"
    path.write_text(json.dumps(records))
    rows = _rows(SourceConfig(path=str(path)))
    keys = [row["key"] for row in rows]
    assert [row["text"] for row in rows] == ["a", "b", "b", "c", "d"]
    assert len(set(keys)) == 5 and keys == sorted(keys)
    assert [row["line"] for row in rows] == [1] * 5


def test_a_record_position_that_would_spill_into_the_file_index_is_refused():
    with pytest.raises(ValueError, match="outside"):
        record_key(3, 1 << 40)


def test_question_and_answer_blocks_of_a_text_source_are_one_document_each_by_default(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_text("发热怎么办？\n多喝水。\n\n\n咳嗽怎么办？\n看医生。\n", encoding="utf-8")
    assert [row["text"] for row in _rows(SourceConfig(path=str(path)))] == [
        "发热怎么办？\n多喝水。",
        "咳嗽怎么办？\n看医生。",
    ]


def test_json_lines_of_questions_and_answers_in_a_txt_source_become_qa_documents(tmp_path):
    path = tmp_path / "qa.txt"
    path.write_text(
        '{"问": "发热怎么办？", "答": "多喝水。"}\n{"问": "咳嗽？", "答": "看医生。"}\n', encoding="utf-8"
    )
    assert [row["text"] for row in _rows(SourceConfig(path=str(path)))] == [
        "发热怎么办？\n多喝水。",
        "咳嗽？\n看医生。",
    ]

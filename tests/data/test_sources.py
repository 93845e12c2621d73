"""Sources: globs expand to files numbered in corpus order, which record keys are built from."""

from lmforge.config import SourceConfig
from lmforge.data.sources import key_file_index, list_source_files, record_key


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

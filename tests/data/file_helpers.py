"""Helpers shared by the reader and survey tests."""

from lmforge.data.files.records import read_chunk
from lmforge.data.files.survey import survey_file

GBK_CSV = "sft/样例_内科5000-6000.csv"


def read_all(path, format=None, *, text_unit="line", **survey_options):
    survey = survey_file(str(path), format, text_unit=text_unit, **survey_options)
    return [record for chunk in survey.chunks for record in read_chunk(chunk)]


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path

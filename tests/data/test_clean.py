"""Cleaning normalises text; each quality filter names why it drops a document."""

from lmforge.config import CleanConfig
from lmforge.data.steps.clean import char_repetition_ratio, clean_text, rejection_reason


def test_clean_text_removes_controls_and_collapses_whitespace():
    raw = "\ufeff 发热\u200b  是\t常见症状。\r\n\r\n\r\n\r\n第二段\x07 文字  "
    assert clean_text(raw, CleanConfig()) == "发热 是 常见症状。\n\n第二段 文字"


def test_nfkc_turns_full_width_into_ascii_only_when_asked():
    assert clean_text("ＡＢＣ，１２３", CleanConfig(unicode_form="NFKC")) == "ABC,123"
    assert clean_text("ＡＢＣ，１２３", CleanConfig()) == "ＡＢＣ，１２３"


def test_filters_name_the_reason():
    cfg = CleanConfig(min_chars=5, max_chars=100)
    assert rejection_reason("短", cfg) == "too_short"
    assert rejection_reason("长" * 101, cfg) == "too_long"
    assert rejection_reason("同一行\n同一行\n同一行\n另一行", cfg) == "repeated_lines"
    assert rejection_reason("买买买买买买买买买买买买买买买买买买买买买买", cfg) == "char_repetition"
    assert rejection_reason("!!!!@@@@####$$$$%%%%", cfg) == "symbol_ratio"
    assert rejection_reason("传染病是指由病原微生物感染人体后产生的有传染性的疾病。", cfg) is None


def test_char_repetition_is_zero_for_ordinary_prose():
    assert char_repetition_ratio("The quick brown fox jumps over the lazy dog near the river bank.") == 0.0

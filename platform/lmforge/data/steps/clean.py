"""Document cleaning and quality filters; each filter has a name that the counts report."""

from __future__ import annotations

import re
import unicodedata

import numpy as np

from lmforge.config import CleanConfig

# Control and invisible format characters (zero-width space, BOM, soft hyphen...), but not \n and \t.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028\u2029\u2060-\u2064\ufeff]")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # any whitespace but newline, incl. ideographic space
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SYMBOL = re.compile(r"[^\w\s]")  # \w is Unicode-aware: CJK characters and digits count as words
_NGRAM = 10
_PRIME = np.uint64(1099511628211)


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Normalised text: Unicode form, no control characters, single spaces, at most one blank line."""
    if cfg.unicode_form != "none":
        text = unicodedata.normalize(cfg.unicode_form, text)
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()


def rejection_reason(text: str, cfg: CleanConfig) -> str | None:
    """Name of the first quality filter the cleaned text fails, or None to keep it."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return "too_long"
    if repeated_line_ratio(text) > cfg.max_repeated_line_ratio:
        return "repeated_lines"
    if char_repetition_ratio(text) > cfg.max_char_repetition_ratio:
        return "char_repetition"
    if len(_SYMBOL.findall(text)) / len(text) > cfg.max_symbol_ratio:
        return "symbol_ratio"
    return None


def repeated_line_ratio(text: str) -> float:
    """Share of non-empty lines that repeat an earlier line."""
    lines = [line for line in text.split("\n") if line]
    return 1 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0


def char_repetition_ratio(text: str) -> float:
    """Share of character 10-grams that occur more than once in the text (boilerplate, spam)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = codes.size - _NGRAM + 1
    if count < 2:
        return 0.0
    hashes = np.zeros(count, dtype=np.uint64)
    for offset in range(_NGRAM):  # polynomial hash of each window; uint64 wrap-around is intended
        hashes = hashes * _PRIME + codes[offset : offset + count]
    return 1 - np.unique(hashes).size / count

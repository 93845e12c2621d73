"""The data stages: files/ (reading) -> text/ (records as text or conversations) -> steps/ (clean, dedup,
mix, tokenize, pack) -> reports/ (counts, quarantine, pictures); stages/ holds the drivers that chain them."""

"""The stage drivers: train-tokenizer, prepare-pretrain, prepare-sft, and the reading and dedup steps both
data stages start with (source_records).
"""

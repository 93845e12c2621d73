"""lmforge: domain LLMs from raw corpora to a streaming chat endpoint, on Ray."""

__version__ = "0.1.0"

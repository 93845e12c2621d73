"""lmforge: domain LLMs from raw corpora to a streaming chat endpoint, on Ray."""

from pathlib import Path

__version__ = "0.1.0"
# The checkout holding jobs/, serve_apps/ and platform/ (this package): `lmforge submit` uploads it,
# Serve imports serve_apps from it.
REPO_DIR = Path(__file__).resolve().parents[2]

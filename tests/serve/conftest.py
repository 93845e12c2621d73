"""Serve fixtures: one Serve app for the whole serve package (starting one takes 45-130 s here) on the
session's `chat_model_dir` (tests/conftest.py: a tiny SFT model that answers two fixed questions, then
EOS)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import openai
import pytest

# checkpoint_helpers.QA for the tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "convert"))
from served_app import KEY, MODEL


def pytest_collection_modifyitems(items):
    """The serve tests run last, those marked `kills_replica` at the very end (they disturb the shared app).

    tests/serve is not a Python package, so its "package" fixture lives for the whole session: the app's
    replica keeps its CPUs until the end, and tests that start Ray work after it would wait for them.
    """
    serve_dir = Path(__file__).parent
    serve = [item for item in items if serve_dir in item.path.parents]
    others = [item for item in items if serve_dir not in item.path.parents]
    disturbing = [item for item in serve if item.get_closest_marker("kills_replica")]
    items[:] = others + [item for item in serve if item not in disturbing] + disturbing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def api_url(ray_local, chat_model_dir, tmp_path_factory):  # noqa: ARG001 - starts Ray first
    """The /v1 URL of the app (keys and limits on), shut down at the end of the session (the serve tests
    run last: the replica holds CPUs that other tests' Ray work would wait for)."""
    from ray import serve

    from lmforge.config import ServeConfig
    from lmforge.serve.run import start_app

    cfg = ServeConfig(
        model_dir=str(chat_model_dir),
        model_id=MODEL,
        api_keys=[KEY],
        max_prompt_tokens=48,
        max_tokens_limit=64,
        output_dir=str(tmp_path_factory.mktemp("serve")),
        port=_free_port(),
    )
    started = time.perf_counter()
    url = start_app(cfg)
    print(f"\nserve.run healthy after {time.perf_counter() - started:.0f} s")
    yield url
    serve.shutdown()


@pytest.fixture
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_url, api_key=KEY, max_retries=0)

"""`lmforge serve CONFIG`: start the chat app on Ray Serve, print its URL, block;
also write a `serve deploy` file."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from lmforge import REPO_DIR
from lmforge.config import ServeConfig
from lmforge.manifest import Manifest
from lmforge.serve.client import stream_chat

log = logging.getLogger(__name__)
APP_NAME = "lmforge-chat"
IMPORT_PATH = "serve_apps.chat:app"
CONFIG_ENV = "LMFORGE_SERVE_CONFIG"  # serve_apps/chat.py reads its ServeConfig from this file


def write_deploy_config(cfg: ServeConfig) -> Path:
    """Write output_dir/serve.yaml (this resolved config)
    and output_dir/serve_deploy.yaml for `serve deploy`."""
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = out / "serve.yaml"
    # api_keys_env stays a variable name: the keys are read from the environment where the app is built
    resolved.write_text(yaml.safe_dump(cfg.model_dump(), allow_unicode=True, sort_keys=False),
                        encoding="utf-8")
    deploy = {
        "http_options": {"host": cfg.host, "port": cfg.port},
        "applications": [{
            "name": APP_NAME,
            "route_prefix": cfg.route_prefix,
            "import_path": IMPORT_PATH,
            # Serve config files take no local paths to upload, only "local://" dirs present on every
            # node (the same image/checkout) or remote URIs: serve_apps is imported from this checkout.
            "runtime_env": {"working_dir": f"local://{REPO_DIR}",
                            "env_vars": {**cfg.env, CONFIG_ENV: str(resolved)}},
        }],
    }
    path = out / "serve_deploy.yaml"
    path.write_text(yaml.safe_dump(deploy, sort_keys=False), encoding="utf-8")
    return path


def start_app(cfg: ServeConfig) -> str:
    """Deploy the app on the running Ray (serve.run, waits until healthy) and return its base URL."""
    from ray import serve

    from lmforge.serve.app import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=APP_NAME, route_prefix=cfg.route_prefix, blocking=False)
    host = "127.0.0.1" if cfg.host == "0.0.0.0" else cfg.host
    return f"http://{host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/v1"


def run_serve(cfg: ServeConfig) -> Manifest:
    """Start Ray and the app, print the URL, serve until Ctrl-C (or answer `ask_once`),
    then shut Serve down."""
    from ray import serve

    from lmforge.runtime import init_ray

    deploy_file = write_deploy_config(cfg)
    init_ray(cfg.ray)
    started = time.perf_counter()
    url = start_app(cfg)
    print(f"lmforge serve: {cfg.model_id} at {url} (healthy after {time.perf_counter() - started:.0f} s); "
          f"`serve deploy {deploy_file}` deploys the same app on a cluster.", flush=True)
    outputs = {"url": url, "deploy_config": str(deploy_file)}
    try:
        if cfg.ask_once is not None:
            outputs["answer"] = ask(cfg, url, cfg.ask_once)
        else:
            print("Ctrl-C stops.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping Serve")
    finally:
        serve.shutdown()
    return Manifest(stage="serve", config=cfg.model_dump(), outputs=outputs)


def ask(cfg: ServeConfig, url: str, question: str) -> str:
    """Stream one answer from the running app to stdout, piece by piece as it arrives; return it."""
    keys = cfg.resolved_api_keys()
    print(f"user: {question}\nassistant: ", end="", flush=True)
    pieces = []
    for piece in stream_chat(url, cfg.model_id, question, api_key=keys[0] if keys else None,
                             max_tokens=cfg.max_tokens_limit or 128):
        pieces.append(piece)
        print(piece, end="", flush=True)
    print(flush=True)
    return "".join(pieces)

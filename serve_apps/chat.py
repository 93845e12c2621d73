"""`serve run serve_apps.chat:app`: the chat model of the ServeConfig named by LMFORGE_SERVE_CONFIG.

Without the variable it serves configs/demo/serve.yaml. `lmforge serve CONFIG` writes a
serve_deploy.yaml that sets the variable for `serve deploy`.
"""

import os

from lmforge.config import ServeConfig, load_config
from lmforge.serve.app import build_app
from lmforge.serve.run import CONFIG_ENV

app = build_app(load_config(ServeConfig, os.environ.get(CONFIG_ENV, "configs/demo/serve.yaml")))

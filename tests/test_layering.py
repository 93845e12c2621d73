"""The import contracts in pyproject.toml (`make lint`): a module that breaks a layer is reported by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmforge import REPO_DIR as REPO  # the checkout

LINT_IMPORTS = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports with root/pyproject.toml's contracts over root/platform/lmforge."""
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root, env=os.environ | {"PYTHONPATH": str(root / "platform")},
        capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.mark.parametrize(("module", "source", "contract", "shown"), [
    ("data/_violation.py", "import lmforge.cli\n", "nothing imports the CLI",
     "lmforge.data._violation -> lmforge.cli"),
    ("data/_violation.py", "from lmforge.train import loop\n",
     "data never imports train, align, serve or infer",
     "lmforge.data._violation -> lmforge.train.loop"),
    ("config/_violation.py", "from lmforge import runtime\n",
     "config is the bottom layer: it imports nothing else of lmforge",
     "lmforge.config._violation -> lmforge.runtime"),
    ("serve/_violation.py", "import serve_apps.chat\n",
     "the package never imports the job scripts or the Serve apps", "lmforge.serve._violation -> serve_apps"),
])
def test_a_module_that_breaks_a_layer_is_reported_under_its_contract(
    tmp_path, module, source, contract, shown
):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copytree(REPO / "platform" / "lmforge", tmp_path / "platform" / "lmforge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "platform" / "lmforge" / module).write_text(source, encoding="utf-8")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout
    assert shown in result.stdout


def test_the_package_keeps_every_import_contract():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr

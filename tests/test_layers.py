"""The package's architecture as a check that can fail: import-linter's contracts in pyproject.toml
(layers that only import downward, no circles between siblings; see docs/architecture.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import REPO_ROOT

LINT_IMPORTS = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(root) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT_IMPORTS, "--config", "pyproject.toml", "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    result = _lint(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO_ROOT / "ser", tmp_path / "ser", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    labels = tmp_path / "ser" / "core" / "labels.py"
    labels.write_text(labels.read_text() + "\nfrom ser.serving import limits  # the bottom layer reaching up\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "ser.core.labels -> ser.serving.limits" in result.stdout

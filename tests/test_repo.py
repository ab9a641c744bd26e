"""The README's contract: CI runs exactly the README's test command, and the Space metadata is sane."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.DOTALL).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    start_app, run_tests = _readme_commands()[:2]
    ci_script = (REPO_ROOT / ".ci" / "run").read_text()
    assert run_tests in ci_script.splitlines()
    assert "pytest" in run_tests and "app.py" in start_app


def test_space_front_matter_names_the_pinned_gradio():
    readme = (REPO_ROOT / "README.md").read_text()
    front_matter = readme.split("---")[1]
    pinned = re.search(r"^gradio==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert f"sdk_version: {pinned}" in front_matter
    for key in ("title:", "sdk: gradio", "python_version:", "app_file: app.py", "license:", "short_description:"):
        assert key in front_matter
    assert "ffmpeg" in (REPO_ROOT / "packages.txt").read_text().split()


def test_torch_is_pinned_to_the_cpu_wheel():
    assert "torch==2.13.0" in (REPO_ROOT / "requirements.txt").read_text().splitlines()

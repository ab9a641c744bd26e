"""scripts/deploy_space.py: what a Space upload holds, which files go through LFS, and the calls it makes."""

from __future__ import annotations

import pytest

from conftest import REPO_ROOT
from scripts import deploy_space


def _write(root, relative: str, size_bytes: int = 10) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size_bytes)


@pytest.fixture
def tiny_repo(tmp_path):
    for relative in ("app.py", "README.md", "requirements.txt", "packages.txt", "ser/__init__.py", "ser/core/labels.py",
                     "models/ser-multicorpus/config.json", "examples/clip.flac", "tests/test_app.py", "runs/x/model.safetensors",
                     "ser/__pycache__/labels.cpython-311.pyc", "models/ser-multicorpus/onnx/model.onnx", "models/ser-multicorpus/cv/fold.json",
                     ".git/HEAD", "scripts/train_helper.py", "models/ser-ravdess-tdnn/model.safetensors"):
        _write(tmp_path, relative)
    _write(tmp_path, "models/ser-multicorpus/model.safetensors", 11 * 1024 * 1024)
    return tmp_path


def test_the_plan_holds_what_the_space_runs_and_nothing_else(tiny_repo):
    plan = {item.path: item for item in deploy_space.plan_upload(tiny_repo)}
    assert set(plan) == {
        ".gitattributes", "app.py", "README.md", "requirements.txt", "packages.txt", "ser/__init__.py", "ser/core/labels.py",
        "models/ser-multicorpus/config.json", "models/ser-multicorpus/model.safetensors", "examples/clip.flac",
    }
    assert plan["models/ser-multicorpus/model.safetensors"].lfs and plan["examples/clip.flac"].lfs
    assert not plan["app.py"].lfs and not plan[".gitattributes"].lfs  # written by the deploy itself
    assert plan["models/ser-multicorpus/model.safetensors"].size_bytes == 11 * 1024 * 1024
    assert deploy_space.problems_of(list(plan.values())) == []


def test_a_large_file_outside_lfs_is_a_problem(tiny_repo):
    problems = deploy_space.problems_of(deploy_space.plan_upload(tiny_repo, lfs_patterns=["*.flac"]))
    assert len(problems) == 1 and "models/ser-multicorpus/model.safetensors is 11.5 MB and not LFS" in problems[0]


def test_a_missing_model_is_a_problem(tiny_repo):
    (tiny_repo / "models/ser-multicorpus/model.safetensors").unlink()
    assert deploy_space.problems_of(deploy_space.plan_upload(tiny_repo)) == [
        "models/ser-multicorpus/model.safetensors is missing from the upload: the Space needs it."
    ]


def test_lfs_patterns_follow_git_rules():
    patterns = ["*.safetensors", "/docs/*.png"]
    assert deploy_space.is_lfs("models/ser-multicorpus/model.safetensors", patterns)
    assert deploy_space.is_lfs("docs/figure.png", patterns)
    assert not deploy_space.is_lfs("models/eval/figure.png", patterns)
    assert not deploy_space.is_lfs("app.py", patterns)


def test_dry_run_of_this_repository_lists_every_file_offline(capsys):
    assert deploy_space.main(["--repo_id", "someone/ser", "--dry_run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:-2]}
    assert rows["models/ser-multicorpus/model.safetensors"] == "LFS"
    assert rows["app.py"] == "plain" and rows["packages.txt"] == "plain"
    assert rows["examples/angry_actor23.flac"] == "LFS" and rows["examples/examples.json"] == "plain"
    assert rows["docs/images/app.png"] == "LFS" and rows["docs/images/timeline.png"] == "LFS"  # the README's pictures
    assert {"ser/predictor.py", "ser/inference/predictor.py", "requirements.txt", "README.md", ".gitattributes", "docs/architecture.md"} <= set(rows)
    assert not [path for path in rows if path.startswith(("tests/", "runs/", "benchmarks/")) or "__pycache__" in path or "/onnx/" in path]
    assert "Dry run: nothing was uploaded" in out
    # every file of the package the app imports is there
    package = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "ser").rglob("*.py")}
    assert package <= set(rows)


def test_a_bad_repo_id_is_refused():
    assert deploy_space.main(["--repo_id", "no-owner", "--dry_run"]) == 2


def test_deploy_creates_a_gradio_space_and_uploads_the_planned_patterns(tiny_repo, monkeypatch):
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/spaces/{repo_id}"

        def upload_file(self, **kwargs):
            calls.append(("upload_file", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.setattr("huggingface_hub.HfApi", RecordingApi)
    args = deploy_space.DeployArguments(repo_id="someone/ser", token="hf_test")
    assert deploy_space.deploy(args, tiny_repo) == "https://huggingface.co/spaces/someone/ser"
    assert calls[0] == ("init", "hf_test")
    assert calls[1] == ("create_repo", "someone/ser", {"repo_type": "space", "space_sdk": "gradio", "private": False, "exist_ok": True})
    gitattributes = calls[2][1]  # before the binaries, so that they are stored through LFS
    assert calls[2][0] == "upload_file" and gitattributes["path_in_repo"] == ".gitattributes" and gitattributes["repo_type"] == "space"
    assert "*.safetensors filter=lfs diff=lfs merge=lfs -text\n" in gitattributes["path_or_fileobj"].decode()
    upload = calls[3][1]
    assert calls[3][0] == "upload_folder"
    assert upload["repo_type"] == "space" and upload["folder_path"] == tiny_repo
    assert upload["allow_patterns"] == deploy_space.ALLOW_PATTERNS and upload["ignore_patterns"] == deploy_space.IGNORE_PATTERNS


def test_a_clone_is_clean_where_git_lfs_is_installed(tmp_path):
    """No LFS rules over plain blobs: after ``git clone`` with git-lfs active, no "should have been
    pointers" warning and ``git status`` is empty (the Space's rules are written by the deploy)."""
    import os
    import shutil
    import subprocess

    if shutil.which("git") is None or subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0:
        pytest.skip("git-lfs is not installed (apt-get install git-lfs)")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "GIT_CONFIG_NOSYSTEM": "1"}
    (tmp_path / "home").mkdir()
    subprocess.run(["git", "lfs", "install"], env=env, check=True, capture_output=True)  # the filters, as a user who uses LFS has them
    clone = subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(tmp_path / "clone")], env=env, capture_output=True, text=True)
    assert clone.returncode == 0, clone.stderr
    assert "should have been pointers" not in clone.stderr + clone.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path / "clone", env=env, capture_output=True, text=True, check=True)
    assert status.stdout == ""
    assert not (tmp_path / "clone" / ".gitattributes").exists()

"""Publish this repository as a Hugging Face Space (Gradio SDK), or list what would be published.

    python -m scripts.deploy_space --repo_id USER/SPACE --dry_run      # offline: every file, its size, LFS or not
    HF_TOKEN=hf_... python -m scripts.deploy_space --repo_id USER/SPACE # create the Space (if new) and upload

The upload is the app and what it imports (``app.py``, ``ser/``), the bundled model, the example
clips, the requirements, ``packages.txt`` (ffmpeg), ``README.md`` (the Space's front matter), the
``docs/`` pages it links to and the images they show; never tests, runs, caches, exported ONNX
graphs, evaluations or benchmarks. The dry run selects files exactly as the upload does
(``huggingface_hub``'s own pattern filter). It fails when a file that is not LFS is over the Hub's
10 MB limit for plain files, so the upload would be refused.

**LFS.** The Space stores binaries (weights, audio, images) through Git LFS, as the Hub requires for
large files; this repository stores them as ordinary Git objects, so it has no ``.gitattributes``
(LFS rules over plain blobs would make every clone dirty where git-lfs is installed). The deploy
writes the Space's ``.gitattributes`` from :data:`SPACE_LFS_PATTERNS` before uploading the rest, and
the dry run shows it in the plan.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("deploy_space")

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The Hub refuses plain (non-LFS) files larger than this.
MAX_PLAIN_FILE_BYTES = 10 * 1024 * 1024

#: What the Space runs: the app, the package, the bundled model, the example clips, the requirements.
ALLOW_PATTERNS = [
    "app.py",
    "README.md",
    "model_card.md",
    "docs/*.md",
    "docs/images/*.png",
    "requirements.txt",
    "packages.txt",
    "ser/*.py",
    "models/ser-multicorpus/*",
    "examples/*.flac",
    "examples/*.wav",
    "examples/examples.json",
    "examples/README.md",
]
#: The Space's ``.gitattributes``: these go through Git LFS there (the Hub refuses plain files over 10 MB).
SPACE_LFS_PATTERNS = ["*.safetensors", "*.bin", "*.onnx", "*.pt", "*.npz", "*.parquet", "*.png", "*.flac", "*.wav", "*.mp3", "*.ogg"]
GITATTRIBUTES = ".gitattributes"
#: Never uploaded, even under an allowed folder (fnmatch's ``*`` also crosses ``/``).
IGNORE_PATTERNS = [
    "*/__pycache__/*",
    "*.pyc",
    "tests/*",
    "runs/*",
    "eval/*",
    "*/onnx/*",
    "models/*/eval/*",
    "models/*/cv/*",
    "models/*/matrix/*",
    ".venv/*",
    "*.egg-info/*",
]


@dataclass
class DeployArguments:
    repo_id: str = field(metadata={"help": "The Space, as USER/NAME or ORG/NAME."})
    dry_run: bool = field(default=False, metadata={"help": "List every file that would be uploaded (size, LFS or not) and stop; needs no network."})
    private: bool = field(default=False, metadata={"help": "Create the Space as private (only when it does not exist yet)."})
    token: str | None = field(default=None, metadata={"help": "Hub token with write access (default: $HF_TOKEN, else the one `huggingface-cli login` saved)."})
    commit_message: str = field(default="Deploy from scripts/deploy_space.py", metadata={"help": "Commit message on the Space."})


@dataclass(frozen=True)
class PlannedFile:
    path: str  # relative to the repository root, as in the Space
    size_bytes: int
    lfs: bool


def space_gitattributes(patterns: list[str] = SPACE_LFS_PATTERNS) -> str:
    """The ``.gitattributes`` the deploy writes on the Space."""
    header = "# Written by scripts/deploy_space.py: binaries go through Git LFS on the Hub.\n"
    return header + "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in patterns)


def is_lfs(path: str, patterns: list[str]) -> bool:
    """Git's rule for a pattern without a slash: it matches the file name at any depth."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name if "/" not in pattern else path, pattern.lstrip("/")) for pattern in patterns)


def plan_upload(root: Path = REPO_ROOT, lfs_patterns: list[str] = SPACE_LFS_PATTERNS) -> list[PlannedFile]:
    """The Space's ``.gitattributes``, then the files ``upload_folder`` would send, selected by huggingface_hub's own filter."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    files = {path.relative_to(root).as_posix(): path for path in sorted(root.glob("**/*")) if path.is_file()}
    selected = filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS)
    written = PlannedFile(GITATTRIBUTES, len(space_gitattributes(lfs_patterns).encode()), False)
    return [written] + [PlannedFile(path, files[path].stat().st_size, is_lfs(path, lfs_patterns)) for path in selected]


def problems_of(plan: list[PlannedFile]) -> list[str]:
    """What would make the upload fail or the Space not start."""
    problems = [
        f"{item.path} is {item.size_bytes / 1e6:.1f} MB and not LFS: add its pattern to SPACE_LFS_PATTERNS (the Hub refuses plain files over 10 MB)."
        for item in plan
        if not item.lfs and item.size_bytes > MAX_PLAIN_FILE_BYTES
    ]
    paths = {item.path for item in plan}
    for needed in ("app.py", "README.md", "requirements.txt", "packages.txt", "models/ser-multicorpus/model.safetensors"):
        if needed not in paths:
            problems.append(f"{needed} is missing from the upload: the Space needs it.")
    return problems


def format_plan(plan: list[PlannedFile]) -> str:
    width = max((len(item.path) for item in plan), default=4)
    lines = [f"{'file'.ljust(width)}  {'bytes':>12}  storage"]
    lines += [f"{item.path.ljust(width)}  {item.size_bytes:>12,}  {'LFS' if item.lfs else 'plain'}" for item in plan]
    lfs_bytes = sum(item.size_bytes for item in plan if item.lfs)
    total = sum(item.size_bytes for item in plan)
    lines.append(
        f"{len(plan)} files, {total / 1e6:.1f} MB ({sum(item.lfs for item in plan)} through LFS: {lfs_bytes / 1e6:.1f} MB; "
        f"{sum(not item.lfs for item in plan)} plain: {(total - lfs_bytes) / 1e6:.1f} MB)"
    )
    return "\n".join(lines)


def deploy(args: DeployArguments, root: Path = REPO_ROOT) -> str:
    """Create the Space if needed, write its ``.gitattributes`` (LFS first, so the binaries that follow
    are stored through it) and upload the planned files; returns the Space's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=args.token or os.environ.get("HF_TOKEN") or None)
    url = api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", private=args.private, exist_ok=True)
    api.upload_file(
        path_or_fileobj=space_gitattributes().encode(),
        path_in_repo=GITATTRIBUTES,
        repo_id=args.repo_id,
        repo_type="space",
        commit_message=f"{args.commit_message}: Git LFS rules",
    )
    api.upload_folder(
        repo_id=args.repo_id,
        repo_type="space",
        folder_path=root,
        allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=IGNORE_PATTERNS,
        commit_message=args.commit_message,
    )
    return str(url)


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    (args,) = HfArgumentParser(DeployArguments).parse_args_into_dataclasses(args=argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        logger.error("--repo_id %r: use USER/NAME (or ORG/NAME).", args.repo_id)
        return 2
    plan = plan_upload()
    print(format_plan(plan))
    problems = problems_of(plan)
    for problem in problems:
        logger.error("%s", problem)
    if problems:
        return 1
    if args.dry_run:
        print(f"Dry run: nothing was uploaded. Without --dry_run this creates (if new) and updates https://huggingface.co/spaces/{args.repo_id}")
        return 0
    print(f"Deployed to {deploy(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

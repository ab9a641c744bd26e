"""The docs' contract: every relative link in README.md and docs/*.md resolves, and the command lines
they quote stay in step with the code (each ``--flag`` is one the command's ``--help`` lists, and each
repository path they name exists).

The commands are the ``python ...`` lines of ```bash blocks (continuation lines joined) and the
inline code spans that start one: ``python app.py``, ``python train.py``, ``python <script>.py`` and
``python -m <module>`` for the project's own modules (``ser.*``, ``scripts.*``, ``benchmarks.*``),
also as ``.venv/bin/python``. Each distinct command's ``--help`` runs once (all of them in one
subprocess, so the heavy imports happen once).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
#: Top-level folders whose ``python -m`` modules are the project's own.
PROJECT_PACKAGES = ("ser", "scripts", "benchmarks")
#: Commands that pass the flags after a bare ``--`` on to another command.
PASSES_ON_AFTER_DASHES = {"-m scripts.cross_validate": "train.py"}
#: Repository paths quoted in commands that must exist (outputs go to runs/, eval/, /tmp, ...).
REPO_PATH = re.compile(r"(?:^|(?<=[=,:'\"(]))((?:configs|examples|models|scripts|benchmarks|ser|docs|tests)/[^\s,:;'\")*?]*)")
FENCE = re.compile(r"^```(.*)$")
HELP_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
HELP_TIMEOUT_S = 120


# -- reading the docs ---------------------------------------------------------------------------
def split_markdown(text: str) -> tuple[str, list[tuple[str, str]]]:
    """``(prose without fenced blocks, [(language, block text), ...])``."""
    prose, blocks, language, body = [], [], None, []
    for line in text.splitlines():
        fence = FENCE.match(line)
        if language is None and fence:
            language, body = fence.group(1).strip(), []
        elif language is not None and line.startswith("```"):
            blocks.append((language, "\n".join(body)))
            language = None
        elif language is not None:
            body.append(line)
        else:
            prose.append(line)
    assert language is None, "an unclosed ``` fence"
    return "\n".join(prose), blocks


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    prose, _ = split_markdown(path.read_text())
    anchors, seen = set(), {}
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    prose, _ = split_markdown(path.read_text())
    prose = re.sub(r"`[^`]*`", "", prose)  # a [x](y) inside code is not a link
    targets = re.findall(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    return [target for target in targets if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def command_lines(path: Path) -> list[str]:
    """The shell lines of the page's ```bash blocks (continuations joined), then its inline
    ``python ...`` code spans."""
    prose, blocks = split_markdown(path.read_text())
    lines = []
    for language, body in blocks:
        if language in ("bash", "sh", "shell", "console"):
            lines += [line.strip() for line in re.sub(r"\\\n\s*", " ", body).splitlines() if line.strip()]
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if re.match(r"(\S*/)?python3? ", span) or re.search(r"(^|\s)(\S*/)?python3? (-m \S+|\S+\.py)", span):
            lines.append(span)
    return lines


def shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in a fragment: fall back to blanks
        return line.split("#", 1)[0].split()


def is_python(word: str) -> bool:
    return re.fullmatch(r"python3?(\.\d+)?", Path(word).name) is not None


def project_command(words: list[str]) -> tuple[str, list[str]] | None:
    """``(command, arguments)`` for ``python app.py ...`` / ``python -m ser.predict ...``; else None."""
    if len(words) < 2 or words[1] in ("-c", "-"):
        return None
    if words[1] == "-m" and len(words) > 2:
        module = words[2]
        if module.split(".")[0] not in PROJECT_PACKAGES:
            return None  # pytest, pip, ...
        return f"-m {module}", words[3:]
    if words[1].endswith(".py"):
        return words[1], words[2:]
    return None


@cache
def quoted_commands() -> dict[str, dict[str, set[str]]]:
    """``{command: {flag: {"doc: line", ...}}}`` over every page; flags after a bare ``--`` of a
    command that passes them on are filed under the command that receives them."""
    commands: dict[str, dict[str, set[str]]] = {}
    for doc in DOCS:
        for line in command_lines(doc):
            words = shell_words(line)
            segments, current = [], []
            for word in words:
                if word and set(word) <= set("&|;()<>"):
                    segments.append(current)
                    current = []
                else:
                    current.append(word)
            segments.append(current)
            for segment in segments:
                start = next((i for i, word in enumerate(segment) if is_python(word)), None)
                found = project_command(segment[start:]) if start is not None else None
                if found is None:
                    continue
                command, arguments = found
                where = f"{doc.relative_to(REPO_ROOT)}: {line}"
                flags = commands.setdefault(command, {})
                for position, word in enumerate(arguments):
                    if word == "--" and command in PASSES_ON_AFTER_DASHES:
                        receiver = commands.setdefault(PASSES_ON_AFTER_DASHES[command], {})
                        for passed in arguments[position + 1 :]:
                            if passed.startswith("--") and len(passed) > 2:
                                receiver.setdefault(passed.split("=", 1)[0], set()).add(where)
                        break
                    if word.startswith("--") and len(word) > 2:
                        flags.setdefault(word.split("=", 1)[0], set()).add(where)
    return commands


def quoted_repo_paths() -> list[tuple[str, str]]:
    """``(path, "doc: line")`` for every repository path named in a command line."""
    found = []
    for doc in DOCS:
        for line in command_lines(doc):
            for word in shell_words(line):
                for path in REPO_PATH.findall(word):
                    if path and "..." not in path:
                        found.append((path.rstrip("."), f"{doc.relative_to(REPO_ROOT)}: {line}"))
    return found


# -- running the commands' help -----------------------------------------------------------------
#: Runs each command's ``--help`` as ``python <script> --help`` / ``python -m <module> --help`` would
#: (``runpy`` with ``__main__`` as the name and ``sys.argv`` set), all in one process, so torch,
#: transformers and gradio are imported once rather than once per command. Prints JSON.
HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
results = {}
for command in sys.argv[1:]:
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if command.startswith("-m "):
                module = command[3:]
                sys.argv = [module, "--help"]
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                sys.argv = [command, "--help"]
                runpy.run_path(command, run_name="__main__")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = -2
    results[command] = [code, out.getvalue()]
sys.stdout.write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def help_texts() -> dict[str, tuple[int, str]]:
    """Every quoted command's ``--help``, once each, in one subprocess."""
    commands = sorted(quoted_commands())
    env = {**os.environ, **HELP_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *commands], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=HELP_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, f"the --help runner failed ({done.returncode}): {done.stderr[-2000:]}"
    return {command: (code, text) for command, (code, text) in json.loads(done.stdout).items()}


# -- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO_ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in relative_links(doc):
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO_ROOT)}")
    assert not broken, f"{doc.relative_to(REPO_ROOT)}: " + "; ".join(broken)


def test_the_docs_quote_the_main_commands():
    """Guards the collector: if it stopped finding commands, the flag test would pass on nothing."""
    commands = quoted_commands()
    for command in ("app.py", "train.py", "evaluate_crosslingual.py", "-m ser.predict", "-m scripts.deploy_space"):
        assert commands.get(command), f"no `python {command} --flag` found in the docs"


def test_quoted_flags_are_in_the_commands_help(help_texts):
    problems = []
    for command, flags in sorted(quoted_commands().items()):
        returncode, text = help_texts[command]
        if returncode != 0 or "usage" not in text.lower():
            problems.append(f"`python {command} --help` failed ({returncode}): {text[-500:]}")
            continue
        for flag, places in sorted(flags.items()):
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"`python {command}` has no {flag} (quoted in {min(places)})")
    assert not problems, "\n".join(problems)


def test_quoted_repo_paths_exist():
    missing = sorted({f"{path} (in {where})" for path, where in quoted_repo_paths() if not (REPO_ROOT / path).exists()})
    assert not missing, "\n".join(missing)


def test_quoted_scripts_and_modules_exist():
    missing = []
    for command in quoted_commands():
        if command.startswith("-m "):
            module = REPO_ROOT.joinpath(*command[3:].split("."))
            if not (module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()):
                missing.append(command)
        elif not (REPO_ROOT / command).is_file():
            missing.append(command)
    assert not missing, f"quoted commands with no such script or module: {missing}"

"""The Docker image: a slim Python base (torch's wheel brings CUDA), a non-root user, a dependency layer built
from pyproject.toml alone, and a build context without data, results, environments, checkpoints or history.
Docker itself is not needed: the files are read (and `.dockerignore` matched the way Docker matches it)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", "", (ROOT / "Dockerfile").read_text())
    return [(line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1] if " " in line.strip() else "")
            for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching: against the path from the context root; ``*`` stays within one folder, ``**`` spans
    any number of them; a trailing ``/`` is dropped; a matched folder excludes everything below it."""
    out, i, p = "", 0, pattern.strip("/")
    while i < len(p):
        if p.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif p.startswith("**", i):
            out, i = out + ".*", i + 2
        elif p[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif p[i] == "?":
            out, i = out + "[^/]", i + 1
        elif p[i] == "[":  # a character class as it is, e.g. *.py[cod]
            j = p.index("]", i)
            out, i = out + p[i:j + 1], j + 1
        else:
            out, i = out + re.escape(p[i]), i + 1
    return re.compile(out + "(?:/.*)?")


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:  # the last matching line wins; "!" re-includes
        negate = pattern.startswith("!")
        if _pattern_regex(pattern.lstrip("!")).fullmatch(path):
            ignored = not negate
    return ignored


def test_dockerignore_lists_and_keeps_out_data_results_environments_checkpoints_and_history():
    patterns = _ignore_patterns()
    for required in ("data/", "outputs/", ".venv/", "wandb/", "*.ckpt", ".git"):
        assert required in patterns, f".dockerignore does not list {required}"
    for path in ("data/phantom/images/p0001_00.png", "outputs/demo/runs/r1/checkpoints/epoch_003.ckpt",
                 ".venv/bin/python", "wandb/offline-run-1/run.wandb", "best.ckpt", "experiments/old/last.ckpt",
                 ".git/HEAD", "spinenet/__pycache__/cli.cpython-311.pyc", ".pytest_cache/v/cache/nodeids"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker build"
    # what the build needs stays in the context
    for path in ("pyproject.toml", "README.md", "spinenet/cli/__init__.py", "conf/train.yaml", "experiments/demo.yaml",
                 "spinenet/data/io.py", "conf/data/phantom_sagittal.yaml"):
        assert (ROOT / path).exists(), path
        assert not _ignored(path, patterns), f".dockerignore drops {path}, which the image needs"


def test_dockerfile_uses_a_slim_python_base_and_a_non_root_user():
    steps = _instructions()
    bases = [args for op, args in steps if op == "FROM"]
    assert bases == ["python:3.11-slim"]  # no nvidia/cuda image: the torch wheel bundles CUDA
    users = [args for op, args in steps if op == "USER"]
    assert users, "the Dockerfile sets no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerfile_installs_the_dependencies_before_copying_the_code():
    steps = _instructions()
    copies = [(i, args) for i, (op, args) in enumerate(steps) if op == "COPY"]
    code = next(i for i, args in copies if args.split()[0] == ".")
    deps = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "requirements" in args)
    assert all(args.split()[0] == "pyproject.toml" for i, args in copies if i < deps)
    assert deps < code


def test_dockerfile_dependency_layer_reads_pyproject_with_its_extras(tmp_path):
    """The layer's requirement list, made by the Dockerfile's own command from the repo's pyproject.toml."""
    run = next(args for op, args in _instructions() if op == "RUN" and "tomllib" in args)
    extras = re.findall(r"'(\w+)'", re.search(r"for e in \(([^)]*)\)", run).group(1))
    assert "onnx" in extras and "dicom" in extras
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(extras) <= set(project["optional-dependencies"]), "the image installs extras pyproject has"
    command = shlex.split(run.split(">")[0].replace("/src/pyproject.toml", str(ROOT / "pyproject.toml")))
    assert command[:2] == ["python", "-c"]
    lines = subprocess.run([sys.executable, "-c", command[2]], check=True, capture_output=True,
                           text=True).stdout.split()
    assert set(project["dependencies"]) <= set(lines), "every pinned dependency, as pyproject states it"
    assert set(project["optional-dependencies"]["onnx"]) <= set(lines)
    assert all(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*([<>=!~;\[].*)?$", line) for line in lines), lines

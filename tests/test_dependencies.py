"""Every third-party package that spinenet imports is declared in pyproject.toml, so nothing works only
because another package happened to pull it in: module-level imports by `dependencies`, imports inside a
function or a ``try`` (an optional feature that says what to install) by `dependencies` or an extra other
than `dev` (test-only packages such as scikit-learn live there)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import pkgutil
import re
import sys
import tomllib
from pathlib import Path

import spinenet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spinenet"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _names(requirements: list[str]) -> set[str]:
    return {_normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0)) for r in requirements}


def _declared() -> tuple[set[str], set[str]]:
    """(core distributions, distributions of the extras that the package itself uses: all but dev)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: v for k, v in project.get("optional-dependencies", {}).items() if k != "dev"}
    return _names(project["dependencies"]), _names([r for reqs in extras.values() for r in reqs])


def _third_party_imports() -> dict[str, dict[str, bool]]:
    """top-level module -> {"file:line": imported at module level (unconditionally)}."""
    found: dict[str, dict[str, bool]] = {}

    def visit(node: ast.AST, path: Path, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = eager and not (isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try)
                                   or isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "spinenet":
                    found.setdefault(top, {})[f"{path.relative_to(ROOT)}:{child.lineno}"] = eager
            visit(child, path, inner)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text(), str(path)), path, eager=True)
    return found


def test_every_spinenet_module_imports():
    failed = []
    for info in pkgutil.walk_packages(spinenet.__path__, "spinenet.", onerror=failed.append):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # report them all, not the first
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
    assert not failed, "\n".join(failed)


def test_every_third_party_import_is_a_declared_distribution():
    core, extras = _declared()
    owners = importlib.metadata.packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "PIL", "cv2", "tqdm"} <= imports.keys()  # the scan sees the package's imports
    problems = []
    for module, places in sorted(imports.items()):
        # a module that is not installed here can only be checked by its name (e.g. onnxruntime)
        dists = {_normalize(d) for d in owners.get(module, [module])}
        eager = [p for p, at_module_level in places.items() if at_module_level]
        where = ", ".join(eager or places)[:200]
        if eager and not dists & core:
            problems.append(f"{module} ({'/'.join(sorted(dists))}) imported at module level in {where}: "
                            "not in [project] dependencies")
        elif not dists & (core | extras):
            problems.append(f"{module} ({'/'.join(sorted(dists))}) imported in {where}: not declared")
    assert not problems, "\n".join(problems)


"""The layers of ARCHITECTURE.md hold in the code.

`lint-imports` (import-linter, run by the README's test command and so by CI) checks the layers
contract in `.importlinter` over the modules of the `llm2vec_fast` package. It cannot see inside
the two top-level folders that become subpackages through ``__path__`` (kernels/ ->
``llm2vec_fast.kernels``, training/ -> ``llm2vec_fast.training``): to its graph each is one
module. This file checks those folders' imports against the same contract, shows that breaking
the contract makes `lint-imports` fail, and that no module uses another module's private names.
"""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
FOLDERS = {"kernels": "llm2vec_fast.kernels", "training": "llm2vec_fast.training"}


def layers() -> list[list[str]]:
    """The layers contract, top first: each a list of module names (without the container)."""
    cfg = configparser.ConfigParser()
    cfg.read(CONFIG)
    section = next(s for s in cfg.sections() if cfg[s].get("type") == "layers")
    out = []
    for line in cfg[section]["layers"].strip().splitlines():
        out.append([m.strip() for m in line.replace("|", ":").split(":") if m.strip()])
    return out


def layer_of(module: str, table: list[list[str]]) -> int | None:
    """Index of the layer holding ``llm2vec_fast.<name>...`` (0 = top); None if unlisted."""
    parts = module.split(".")
    if parts[0] != "llm2vec_fast" or len(parts) < 2:
        return None
    for i, names in enumerate(table):
        if parts[1] in names:
            return i
    return None


def imported_modules_of_node(node: ast.ImportFrom, package: str) -> list[tuple[str, int]]:
    """The absolute module of a ``from ... import`` in a file of ``package``."""
    if node.level:
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        return [(".".join(base + ([node.module] if node.module else [])), node.lineno)]
    return [(node.module or "", node.lineno)]


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in one file of ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out += [(line, mod) for mod, line in imported_modules_of_node(node, package)]
    return out


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_folder_subpackages_import_only_lower_layers(folder):
    table = layers()
    own = layer_of(FOLDERS[folder], table)
    assert own is not None, f"{FOLDERS[folder]} is not in the layers contract of {CONFIG.name}"
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, mod in imported_modules(path, FOLDERS[folder]):
            if mod.startswith(FOLDERS[folder]):
                continue  # inside the folder itself
            other = layer_of(mod, table)
            if other is not None and other <= own:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod} (not a lower layer)")
    assert not bad, "\n".join(bad)


def test_kernels_import_only_torch_and_triton():
    allowed_roots = {"torch", "triton", "numpy", "__future__"}
    bad = []
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        for line, mod in imported_modules(path, "llm2vec_fast.kernels"):
            root = mod.split(".")[0]
            if mod.startswith("llm2vec_fast.kernels") or root in allowed_roots:
                continue
            if root in sys.stdlib_module_names:
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [exe, "--no-logo", "--no-cache", str(cwd / ".importlinter")],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_lint_imports_passes_here():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lint_imports_fails_when_a_lower_layer_imports_a_higher_one(tmp_path):
    """A copy of the package where the model (core) imports the command line: the contract
    must reject it, so CI would fail."""
    shutil.copytree(
        ROOT / "llm2vec_fast", tmp_path / "llm2vec_fast", ignore=shutil.ignore_patterns("*.so")
    )
    shutil.copy(CONFIG, tmp_path / ".importlinter")
    model = tmp_path / "llm2vec_fast" / "model.py"
    model.write_text(model.read_text() + "\nimport llm2vec_fast.cli  # noqa: E402,F401\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0, r.stdout
    assert "llm2vec_fast.model" in r.stdout and "llm2vec_fast.cli" in r.stdout, r.stdout


def _sources() -> list[Path]:
    files = sorted((ROOT / "llm2vec_fast").rglob("*.py"))
    for folder in FOLDERS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return files


def _private_definitions(files: list[Path]) -> dict[str, set[Path]]:
    """Private (one leading underscore, not dunder) functions, classes and methods by name."""
    defined: dict[str, set[Path]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
                if name.startswith("_") and not name.startswith("__"):
                    defined.setdefault(name, set()).add(path)
    return defined


def _package_of(path: Path) -> str:
    """The package a source file belongs to (``llm2vec_fast.kernels`` for kernels/...)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] in FOLDERS:
        return ".".join([FOLDERS[rel.parts[0]], *rel.parts[1:-1]])
    if rel.parent.name == "llm2vec_fast" and rel.stem in FOLDERS:
        return FOLDERS[rel.stem]  # llm2vec_fast/kernels.py is the package llm2vec_fast.kernels
    return ".".join(rel.parts[:-1])


def _private_module_outside(module: str, package: str) -> bool:
    """``module`` names a private module (a ``_x`` part) of a package ``package`` is not in."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            return not (package == owner or package.startswith(owner + "."))
    return False


def test_no_module_uses_another_modules_private_names():
    """No module imports or calls a private name (``_x``) defined in another file, nor imports
    a private module of another package (``llm2vec_fast.kernels._launch`` from training/)."""
    files = _sources()
    defined = _private_definitions(files)
    bad = []
    for path in files:
        tree = ast.parse(path.read_text())
        package = _package_of(path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    mods = [m for m, _ in imported_modules_of_node(node, package)]
                for mod in mods:
                    if mod.startswith("llm2vec_fast") and _private_module_outside(mod, package):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {mod}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llm2vec_fast"):
                for a in node.names:
                    if a.name in defined and path not in defined[a.name]:
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}")
            elif isinstance(node, ast.Attribute) and node.attr in defined:
                if path in defined[node.attr]:
                    continue
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert not bad, "\n".join(bad)

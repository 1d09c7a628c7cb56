"""The layers hold by construction: the import contract (.importlinter) passes on the package, fails on a planted
upward import (so the check cannot pass silently), and no private name is used across a module boundary."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "weightshop"
LINT = Path(sys.executable).parent / "lint-imports"


def lint(src_root: Path, config: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(src_root), "HOME": str(src_root)}
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=src_root, env=env,
                          capture_output=True, text=True, timeout=120)


def package_copy(tmp_path: Path) -> Path:
    """The package's sources (no weights) in a fresh folder, for planting imports into."""
    shutil.copytree(PACKAGE, tmp_path / "weightshop", ignore=shutil.ignore_patterns("weights", "__pycache__"))
    return tmp_path


def test_the_package_keeps_its_layers():
    result = lint(ROOT / "src", ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, culprit", [
    # a foundation module importing a stage (the models <-> nano cycle that used to exist)
    ("models/loading.py", "from weightshop.nano import world", "weightshop.models.loading -> weightshop.nano.world"),
    # a format importing a stage, inside a function (lazy imports count too)
    ("lora/formats.py", "def _planted():\n    from weightshop.train import config\n",
     "weightshop.lora.formats -> weightshop.train.config"),
    # a stage importing one downstream of it in the loop
    ("data/cache.py", "import weightshop.transfer.sweep", "weightshop.data.cache -> weightshop.transfer.sweep"),
])
def test_a_planted_upward_import_breaks_the_contract(tmp_path, module, planted, culprit):
    src = package_copy(tmp_path)
    target = src / "weightshop" / module
    target.write_text(target.read_text() + "\n\n" + planted + "\n")
    result = lint(src, ROOT / ".importlinter")
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and culprit in result.stdout, result.stdout


def _imported_modules(tree: ast.AST) -> dict[str, str]:
    """Local name -> weightshop module, for `import weightshop.x as y` and `from weightshop.x import module`."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("weightshop"):
                    names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightshop"):
            for alias in node.names:
                if (PACKAGE.parent / node.module.replace(".", "/") / alias.name).exists() or (
                        PACKAGE.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists():
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def private_uses(path: Path) -> list[str]:
    """`from weightshop.x import _name` and `module._name` for a weightshop module imported here."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("weightshop"):
            found += [f"{path.name}:{node.lineno} imports {node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    modules = _imported_modules(tree)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{path.name}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_crosses_a_module_boundary():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "experiments").glob("*.py")]
    found = [use for path in files for use in private_uses(path)]
    assert found == []


def test_the_private_name_check_sees_both_forms(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from weightshop.models.loading import _cast\nfrom weightshop import demo\n"
                       "demo._private()\n")
    assert len(private_uses(planted)) == 2

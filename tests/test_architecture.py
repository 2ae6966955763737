"""The layout contract of docs/architecture.md: the import layers (import-linter, configured in
pyproject.toml), no import cycle between any two modules, lazy saex imports only where marked, and one stage
module per subcommand with what the command line builds from."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from saex.cli import build_parser, stage_modules
from saex.config import Config
from saex.stages import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "saex"
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def _lint_imports(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [LINT_IMPORTS, "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_import_layers_are_kept():
    r = _lint_imports(ROOT / "pyproject.toml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The same tool on the same code, with two layers swapped (the store imports the config module, so
    with the config module above the store the store's import is upward): it must report the break."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = data["contracts"][0]["layers"]
    swapped = [("saex.files | saex.naming" if "saex.config" in L else L) for L in layers]
    swapped.insert(swapped.index("saex.store | saex.lm | saex.data | saex.viz | saex.distributed"), "saex.config")
    contract = "\n".join(f'    "{L}",' for L in swapped)
    cfg = tmp_path / "contract.toml"
    cfg.write_text(
        f'[tool.importlinter]\nroot_package = "saex"\n\n[[tool.importlinter.contracts]]\nname = "swapped"\n'
        f'type = "layers"\nlayers = [\n{contract}\n]\n'
    )
    r = _lint_imports(cfg)
    assert r.returncode != 0 and "BROKEN" in r.stdout and "saex.store" in r.stdout, r.stdout


def test_no_import_cycle_between_any_two_modules():
    graph = grimp.build_graph("saex")
    cycles = [
        (m, i)
        for m in sorted(graph.modules)
        for i in sorted(graph.find_modules_directly_imported_by(m))
        if i != m and not m.startswith(i + ".") and graph.chain_exists(importer=i, imported=m)
    ]
    assert not cycles, f"import cycles through these imports: {cycles}"


def _function_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a saex module inside a function body, without a `# lazy:` comment."""
    lines = path.read_text().splitlines()
    found = []
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            module = None
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saex"):
                module = node.module
            elif isinstance(node, ast.Import) and any(a.name.startswith("saex") for a in node.names):
                module = node.names[0].name
            before = lines[node.lineno - 2] if module and node.lineno > 1 else ""
            if module and "# lazy:" not in lines[node.lineno - 1] and "# lazy:" not in before:
                found.append((node.lineno, module))
    return found


def test_function_local_saex_imports_say_why():
    """A saex import inside a function keeps a heavy optional dependency off the start-up path, and says so
    (`# lazy: ...` on it or the line above); a cycle is never the reason (the cycle test above)."""
    found = {str(p.relative_to(ROOT)): hits for p in sorted(SRC.rglob("*.py")) if (hits := _function_imports(p))}
    assert not found, found


def test_the_lazy_check_sees_an_unmarked_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text(
        "def f():\n    from saex.files import sha256_path\n\n\ndef g():\n    # lazy: why\n    import saex.cli\n"
    )
    assert _function_imports(p) == [(2, "saex.files")]


def test_one_stage_module_per_subcommand():
    modules = stage_modules()
    on_disk = sorted(p.stem for p in (SRC / "stages").glob("*.py") if p.stem != "__init__")
    assert sorted(COMMANDS) == on_disk
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sorted(subcommands) == sorted(modules)
    for name, m in modules.items():
        assert name == m.NAME and m.__name__ == f"saex.stages.{name.replace('-', '_')}"
        assert issubclass(m.CONFIG, Config) and callable(m.run) and m.HELP
        # the library packages hold no command: nothing below saex.stages defines a stage's config
        assert m.CONFIG.__module__ in (m.__name__, "saex.train.config"), m.CONFIG.__module__
    # every stage sits in a layer of the import contract (a module left out of it would be unchecked)
    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}
    assert {f"saex.stages.{c}" for c in COMMANDS} <= placed, {f"saex.stages.{c}" for c in COMMANDS} - placed


@pytest.mark.parametrize("tool", ["ruff check", "ruff format --check"])
def test_ruff_is_clean(tool):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        ruff = Path(shutil.which("ruff") or "ruff")
    r = subprocess.run(
        [str(ruff), *tool.split()[1:], "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_stage_modules_import_without_the_cli():
    for name in COMMANDS:
        importlib.import_module(f"saex.stages.{name}")


def test_tests_mirror_the_layout_and_share_fixtures_through_fixture_modules():
    """Every subcommand has tests/stages/test_<command>.py; a test imports shared helpers from fixture modules
    (``_name.py``) or gets them from conftest.py, never from another test module or from a conftest."""
    tests = ROOT / "tests"
    for name in COMMANDS:
        if name in ("mmcs", "store", "hooks", "report", "calibrate", "reproduce"):
            continue  # tested in tests/test_cli.py, tests/reproduce/ and tests/train/
        assert (tests / "stages" / f"test_{name}.py").is_file(), name
    bad = []
    for p in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests"):
                last = node.module.split(".")[-1]
                if last.startswith("test_") or last == "conftest":
                    bad.append(f"{p.relative_to(ROOT)}: from {node.module}")
    assert not bad, bad

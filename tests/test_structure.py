"""The seams between files: lib/ has no import circle (counting imports inside functions, which
only hide one), lib/model_config.py, the constants every lib module reads, imports nothing from lib/,
and lib/ does not import data/ or refer/ (so inference needs no pycocotools)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"


def lib_imports(path):
    """Names of the lib modules `path` imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("lib."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lib."))
    return found


def lib_graph():
    modules = {path.stem: path for path in LIB.glob("*.py")}
    return {name: lib_imports(path) & set(modules) - {name} for name, path in modules.items()}


def test_lib_has_no_import_circle():
    graph = lib_graph()
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module not in done:
            path.append(module)
            for imported in sorted(graph[module]):
                visit(imported)
            path.pop()
            done.add(module)

    for module in sorted(graph):
        visit(module)


def test_model_constants_are_a_leaf():
    assert lib_graph()["model_config"] == set()


def test_lib_does_not_import_data():
    for path in LIB.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "data" or n.startswith(("data.", "refer")) for n in names), f"{path.name} imports {names}"


# Run in a fresh interpreter: the test process has pycocotools loaded already.
BLOCKED_PYCOCOTOOLS = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name == "pycocotools" or name.startswith("pycocotools."):
            raise ImportError("pycocotools is blocked")
sys.meta_path.insert(0, Blocker())
from lib.predictor import Predictor
assert "data" not in sys.modules and "refer" not in sys.modules, sorted(m for m in sys.modules if m.startswith(("data", "refer")))
print("ok")
"""


@pytest.mark.slow
def test_predictor_imports_without_pycocotools():
    result = subprocess.run([sys.executable, "-c", BLOCKED_PYCOCOTOOLS], cwd=LIB.parent, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]

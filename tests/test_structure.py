"""The seams between files: lib/ has no import circle (counting imports inside functions, which
only hide one), and lib/model_config.py, the constants every lib module reads, imports nothing from lib/."""
import ast
from pathlib import Path

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

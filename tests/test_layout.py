"""The code's shape: no module imports the entry script, and the project's modules import no cycle."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "data", "training", "sweeper", "benchmarks", "hydra_plugins")


def project_modules():
    modules = {"errors": REPO / "errors.py"}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports(path, known):
    """Project modules a file imports at module level (imports inside functions are deferred on purpose)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import submodule` imports the submodule; `from module import name`, the module.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in known]
            names = submodules if len(submodules) == len(node.names) else [node.module] + submodules
        found |= {name for name in names if name in known}
    return found


def test_no_module_imports_the_entry_script():
    for name, path in project_modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            imported = ([a.name for a in node.names] if isinstance(node, ast.Import)
                        else [node.module] if isinstance(node, ast.ImportFrom) else [])
            assert "train" not in imported, f"{name} imports train.py"


def test_the_project_imports_no_cycle():
    modules = project_modules()
    graph = {name: imports(path, modules) - {name} for name, path in modules.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)

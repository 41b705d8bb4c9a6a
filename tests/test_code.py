"""Rules on the code itself: private library APIs are few and each is marked."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
MARK = "Private API"


def private_reaches() -> list[tuple[Path, int, str]]:
    """Imports from a module whose path has a `_private` part, and attributes `_name` read off
    anything but self or cls (a config's `_target_` is not one)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if any(part.startswith("_") for part in node.module.split(".")):
                    found.append((path, node.lineno, f"from {node.module}"))
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not (own or node.attr.endswith("_")):
                    found.append((path, node.lineno, ast.unparse(node)))
    return found


def test_private_api_reaches_are_few_and_each_says_what_it_was_checked_on():
    reaches = private_reaches()
    unmarked = []
    for path, line, what in reaches:
        lines = path.read_text().splitlines()
        near = " ".join(lines[max(0, line - 3) : line])  # its line or the two above
        if MARK not in near or "checked" not in near:
            unmarked.append(f"{path.relative_to(SRC)}:{line} {what}")
    assert not unmarked, f"mark each with '# {MARK}, checked against <package> <version>'"
    marks = sum(p.read_text().count(MARK) for p in SRC.rglob("*.py"))
    assert len(reaches) <= marks <= 7, (len(reaches), marks)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package and the package's modules it imports, lazily or not."""
    package = SRC / "mnistlab"
    modules = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnistlab"):
                for alias in node.names:
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("mnistlab")}
        graph[name] = found - {name}
    return graph


def test_the_machinery_never_imports_the_example_and_nothing_imports_in_a_circle():
    graph = import_graph()
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in graph.items()
        if m.startswith("mnistlab.lab")
        for d in deps
        if not d.startswith("mnistlab.lab")
    )
    assert not upward, upward
    circles, done = [], set()

    def visit(module, path):
        if module in path:
            circles.append(" -> ".join([*path[path.index(module) :], module]))
            return
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            if dep.rsplit(".", 1)[0] != module:  # a package importing its own module
                visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles, circles

"""Rules on the code itself: private library APIs are few and each is marked."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


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


COMPAT = SRC / "mnistlab" / "lab" / "compat.py"


def inherited_private_members() -> list[tuple[Path, int, str]]:
    """`self._x` read in a class deriving from a library's class where the class never sets
    `self._x` nor defines `_x` itself: a private member it inherits (Lightning's `self._trainer`)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(cls, ast.ClassDef) and cls.bases):
                continue
            own = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
            own |= {t.id for n in cls.body if isinstance(n, ast.Assign | ast.AnnAssign)
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                    if isinstance(t, ast.Name)}  # fmt: skip
            own |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                    and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
                    and n.value.id == "self"}  # fmt: skip
            for node in ast.walk(cls):
                if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                        and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                        and node.attr.startswith("_") and not node.attr.startswith("__")
                        and node.attr not in own):  # fmt: skip
                    found.append((path, node.lineno, f"{cls.name}: self.{node.attr}"))
    return found


def test_private_api_reaches_live_in_compat_only_and_are_few():
    elsewhere = [f"{p.relative_to(SRC)}:{n} {what}" for p, n, what in
                 [*private_reaches(), *inherited_private_members()] if p != COMPAT]  # fmt: skip
    assert not elsewhere, f"move each into mnistlab/lab/compat.py: {elsewhere}"
    reaches = [n for n in ast.parse(COMPAT.read_text()).body
               if isinstance(n, ast.FunctionDef) and n.name != "versions"]  # fmt: skip
    assert len(reaches) <= 8, [f.name for f in reaches]
    assert all(ast.get_docstring(f) for f in reaches)  # each says what it reaches and why


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

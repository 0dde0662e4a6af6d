"""The package's layers and its size limits, checked over the source with `ast` (no imports run).

A module may import modules of its own layer and of the layers below it, never above, and no two
modules may import each other, directly or around a circle. Every import counts: at module level,
inside functions, and under `if TYPE_CHECKING:` — an upward import inside a function is still an
upward import. A real exception goes into ALLOWED with the reason; the way out is almost always to
move the shared piece down a layer or to pass a callable in. See ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "mage_dbt"

# Top to bottom. A module belongs to the first entry whose name is its name or a prefix of it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("mage_dbt.cli",)),
    ("flows", ("mage_dbt.runs", "mage_dbt.backfill", "mage_dbt.refresh", "mage_dbt.deploy",
               "mage_dbt.flows", "mage_dbt.sync_flow")),
    # `mage_dbt` itself re-exports Mage's block decorators (`from mage_dbt import transformer`).
    ("pipelines", ("mage_dbt.pipelines", "mage_dbt.blocks", "mage_dbt")),
    ("engines", ("mage_dbt.dbt", "mage_dbt.warehouse", "mage_dbt.git_sync")),
    ("base", ("mage_dbt.errors", "mage_dbt.settings", "mage_dbt.dates", "mage_dbt.files", "mage_dbt.context")),
]

# (importing module, imported module) -> why this upward import is right. Empty on purpose.
ALLOWED: dict[tuple[str, str], str] = {}

MAX_TOP_LEVEL_MODULES = 8
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix decides
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def imports(path: Path) -> list[tuple[str, int, str]]:
    """(imported mage_dbt module, line, where) for every import statement of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    inside: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                inside.setdefault(getattr(sub, "lineno", -1), f"inside {node.name}()")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; mage_dbt uses absolute imports only"
            if node.module is None or not (node.module == "mage_dbt" or node.module.startswith("mage_dbt.")):
                continue
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                       for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name == "mage_dbt" or a.name.startswith("mage_dbt.")]
        else:
            continue
        for target in dict.fromkeys(targets):
            while target not in MODULES:
                target = target.rpartition(".")[0]
            found.append((target, node.lineno, inside.get(node.lineno, "at module level")))
    return found


def edges() -> list[tuple[str, str, int, str]]:
    return [(m, t, line, where) for m, p in MODULES.items() for t, line, where in imports(p) if t != m]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS in {Path(__file__).name}): {missing}"


def test_no_upward_imports() -> None:
    problems = []
    for module, target, line, where in edges():
        low, high = layer_of(module), layer_of(target)
        if low is None or high is None or high >= low or (module, target) in ALLOWED:
            continue
        problems.append(
            f"{MODULES[module].relative_to(PACKAGE.parent)}:{line} ({where}) imports {target}: "
            f"layer '{LAYERS[low][0]}' may not import '{LAYERS[high][0]}', a layer above it"
        )
    assert not problems, (
        "upward imports (order: " + " -> ".join(name for name, _ in LAYERS) + "); move the shared piece "
        "down a layer, pass a callable in, or add the pair to ALLOWED with the reason:\n  " + "\n  ".join(problems)
    )


def test_no_import_cycles() -> None:
    graph = nx.DiGraph()
    where = {}
    for module, target, line, place in edges():
        graph.add_edge(module, target)
        where.setdefault((module, target), f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}")
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle = nx.find_cycle(graph.subgraph(component))
            cycles.append(" -> ".join(f"{a} ({where[(a, b)]})" for a, b in cycle) + f" -> {cycle[0][0]}")
    assert not cycles, "import circles (every import counts, also inside functions):\n  " + "\n  ".join(cycles)


def test_top_level_stays_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(top)} modules directly in mage_dbt/ (at most {MAX_TOP_LEVEL_MODULES}): {top}; "
        "put the new one in the subpackage that owns its job"
    )


def test_no_module_is_too_long() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams): {long}"


def test_import_dbt_is_dbt_core() -> None:
    """`mage_dbt.dbt` is a subpackage; `import dbt` inside mage_dbt still means dbt-core."""
    importlib.import_module("mage_dbt.dbt.manifest")
    dbt = importlib.import_module("dbt")
    assert PACKAGE not in Path(dbt.__file__).resolve().parents
    assert importlib.import_module("dbt.version").__version__

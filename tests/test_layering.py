"""The floors of clipjax (docs/ARCHITECTURE.md): every import inside the package goes to its own floor or a
lower one, the packages form no cycle, and finetuning data does not load the pretraining data's code.
Read from the source with `ast`, so a lazy import inside a function counts as much as one at the top."""

import ast
import os
import subprocess
import sys

import pytest

# Lowest first; the one list of the floors. A top-level module or package of clipjax is on exactly one.
FLOORS = (
    ("foundation", ("errors", "ops", "tokenizer", "distributed", "compilation_cache", "defaults", "config")),
    ("models and data", ("models", "data")),
    ("placement and saved weights", ("parallel", "weights")),
    ("losses", ("losses",)),
    ("heads", ("heads",)),
    ("evaluation", ("evals",)),
    ("training and conversion", ("train", "convert")),
    ("tasks", ("tasks",)),
    ("entry points", ("validation", "main", "sweep")),
)
FLOOR_OF = {unit: level for level, (_, units) in enumerate(FLOORS) for unit in units}
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clipjax")


def unit_of(module: str) -> str:
    """'clipjax.heads.detection.nms' -> 'heads'."""
    return module.split(".")[1]


def imports() -> list[tuple[str, str]]:
    """(importing module, imported clipjax module) for every import statement in clipjax/."""
    found = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            module = "clipjax." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
            module = module.removesuffix(".__init__")
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("clipjax"):
                    targets = [node.module] if node.module != "clipjax" else [f"clipjax.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names if a.name.startswith("clipjax.")]
                else:
                    continue
                found.extend((module, target) for target in targets)
    return found


def test_every_part_of_clipjax_is_on_a_floor():
    units = {name.removesuffix(".py") for name in os.listdir(PACKAGE) if name.endswith(".py") or "." not in name}
    units -= {"__init__", "__pycache__", "assets"}
    assert units == set(FLOOR_OF), "add the new module to FLOORS (and to docs/ARCHITECTURE.md)"


def upward(pairs: list[tuple[str, str]]) -> list[str]:
    """The imports among `pairs` that go to a higher floor, as lines naming both floors."""
    return [
        f"{module} ({FLOORS[FLOOR_OF[unit_of(module)]][0]}) imports {target} ({FLOORS[FLOOR_OF[unit_of(target)]][0]})"
        for module, target in pairs
        if "." in module and FLOOR_OF[unit_of(target)] > FLOOR_OF[unit_of(module)]
    ]


def test_imports_go_to_the_same_floor_or_lower():
    found = imports()
    assert ("clipjax.losses.detection", "clipjax.ops.boxes") in found  # the walk sees imports
    assert not upward(found), "\n".join(upward(found))
    # What clipjax/losses did before the ops floor existed is caught.
    assert upward([("clipjax.losses.segmentation", "clipjax.heads.towers")]) == [
        "clipjax.losses.segmentation (losses) imports clipjax.heads.towers (heads)"
    ]


def test_the_packages_import_each_other_without_a_cycle():
    graph: dict[str, set[str]] = {}
    for module, target in imports():
        if "." in module and unit_of(module) != unit_of(target):
            graph.setdefault(unit_of(module), set()).add(unit_of(target))
    # Depth-first search for a back edge.
    state: dict[str, str] = {}

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = "open"
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path, unit, nxt]))
            if nxt not in state:
                visit(nxt, [*path, unit])
        state[unit] = "done"

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])


def test_finetuning_data_loads_neither_the_tokenizer_nor_the_webdataset_reader():
    code = (
        "import sys; import clipjax.data.classification, clipjax.data.segmentation, clipjax.data.depth, "
        "clipjax.data.detection; print(sorted(m for m in sys.modules if m in ('clipjax.tokenizer', "
        "'clipjax.data.webdataset', 'clipjax.data.pretrain', 'clipjax.data.datacomp')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

"""Data flows one way (STYLE.md): a lower module never imports a higher one; only fuse_ops imports pyfuse3."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "modelfs"

# Lower number = lower layer. A module may import only modules of a lower-or-equal rank
# listed here, never a higher one.
RANK = {
    "errors": 0,
    "digest": 1,
    "names": 1,
    "gguf": 1,
    "retry": 1,
    "streams": 1,
    "tasks": 1,
    "background": 1,
    "flight": 1,
    "progress": 1,
    "manifest": 2,
    "chunks": 3,
    "auth": 3,
    "bulk": 3,
    "config": 1,
    "blobwatch": 2,
    "registry": 4,
    "blobcache": 4,
    "partial": 5,
    "inventory": 6,
    "create": 6,
    "push": 6,
    "fetcher": 6,
    "resolver": 6,
    "reader": 7,
    "completion": 7,
    "eviction": 7,
    "pull": 8,
    "tree": 8,
    "fuse_ops": 9,
    "daemon": 10,
    "mountctl": 10,
    "cli": 11,
    "__main__": 12,
    "__init__": 0,
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "modelfs":
                found.update(a.name for a in node.names)
            elif node.module.startswith("modelfs."):
                found.add(node.module.split(".")[1])
            elif node.module.split(".")[0] == "pyfuse3":
                found.add("pyfuse3")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("modelfs."):
                    found.add(a.name.split(".")[1])
                elif a.name.split(".")[0] == "pyfuse3":
                    found.add("pyfuse3")
    return found


def test_every_module_has_a_rank():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules <= set(RANK), f"modules without a rank: {modules - set(RANK)}"


def test_imports_only_go_down():
    wrong = []
    for path in PACKAGE.glob("*.py"):
        me = path.stem
        for dep in imports_of(path) - {"pyfuse3", "__version__"}:
            if dep in RANK and RANK[dep] > RANK[me]:
                wrong.append(f"{me} (rank {RANK[me]}) imports {dep} (rank {RANK[dep]})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_only_fuse_ops_imports_pyfuse3():
    users = sorted(p.stem for p in PACKAGE.glob("*.py") if "pyfuse3" in imports_of(p))
    assert users == ["fuse_ops"]

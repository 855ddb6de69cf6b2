"""Data flows one way (docs/architecture.md): a lower layer never imports a higher one; only
fuse_ops imports pyfuse3, and only the registry speaks HTTP.

The folders are the layers: ``modelfs/`` itself holds what every layer uses (errors, tasks,
single flight, the background thread); then the formats, the registry client, the blob layer,
the filesystem, the commands. A module may import from its own package or a lower one, and
within the ranks below never a module of a higher rank.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "modelfs"

PACKAGE_RANK = {"": 0, "formats": 1, "registry": 2, "blobs": 3, "fs": 4, "commands": 5}

# Lower number = lower layer. A module may import only modules of a lower-or-equal rank
# listed here, never a higher one.
RANK = {
    "errors": 0,
    "pids": 0,
    "tasks": 1,
    "flight": 1,
    "background": 1,
    "formats.digest": 1,
    "formats.names": 1,
    "formats.gguf": 1,
    "formats.chattemplates": 1,
    "formats.modelfacts": 2,
    "formats.manifest": 2,
    "formats.relpath": 1,
    "formats.tarindex": 2,
    "formats.safetensors": 2,
    "formats.artifacts": 3,
    "formats.files": 4,
    "formats.folderfacts": 5,
    "formats.chunks": 3,
    "formats.chunksums": 4,
    "formats.referrers": 3,
    "formats.modelfile": 3,
    "formats.dockermodel": 3,
    "formats.folderpack": 4,
    "formats.gofmt": 1,
    "registry.retry": 1,
    "registry.streams": 1,
    "registry.config": 1,
    "registry.origins": 1,
    "registry.ranges": 1,
    "registry.auth": 3,
    "registry.bulk": 3,
    "registry.settings": 1,
    "registry.mirrors": 2,
    "registry.translate": 3,
    "registry.sender": 3,
    "registry.documents": 4,
    "registry.blobreads": 3,
    "registry.pushes": 3,
    "registry.client": 4,
    "blobs.blobwatch": 2,
    "blobs.sharing": 2,
    "blobs.blobcache": 4,
    "blobs.partial": 5,
    "blobs.fetchcontext": 5,
    "blobs.statesave": 6,
    "blobs.wholecheck": 6,
    "blobs.receive": 6,
    "blobs.wholestream": 6,
    "blobs.table": 6,
    "blobs.chunkflights": 6,
    "blobs.present": 7,
    "blobs.small": 6,
    "blobs.requests": 7,
    "blobs.peers": 7,
    "blobs.trust": 7,
    "blobs.publishing": 7,
    "blobs.blobfetch": 7,
    "blobs.fetcher": 8,
    "blobs.sources": 9,
    "blobs.handles": 10,
    "blobs.reader": 10,
    "blobs.door": 11,
    "blobs.header": 11,
    "blobs.files": 11,
    "blobs.folderfacts": 12,
    "blobs.completion": 11,
    "blobs.eviction": 9,
    "blobs.orphans": 4,
    "blobs.unindexed": 4,
    "fs.resolver": 6,
    "fs.modeltree": 5,
    "fs.access": 5,
    "fs.nodes": 7,
    "fs.published": 11,
    "fs.directories": 12,
    "fs.lookups": 12,
    "fs.openfiles": 12,
    "fs.facts": 12,
    "fs.xattrs": 12,
    "fs.tree": 12,
    "fs.errorlog": 12,
    "fs.fuse_ops": 13,
    "fs.daemon": 14,
    "fs.mountctl": 14,
    "fs.mount_options": 14,
    "fs.metricsserver": 6,
    "fs.status": 14,
    "commands.progress": 1,
    "commands.terminal": 1,
    "commands.inventory": 6,
    "commands.ollamafolder": 4,
    "commands.folderstore": 5,
    "commands.create": 6,
    "commands.pushfolder": 13,
    "commands.push": 14,
    "commands.remote_delete": 6,
    "commands.index": 12,
    "commands.pull": 11,
    "commands.show": 12,
    "commands.status": 15,
    "commands.completion": 15,
    "commands.parser": 15,
    "commands.logsetup": 15,
    "commands.logfile": 15,
    "commands.mounthelper": 1,
    "commands.cli": 15,
    "__main__": 16,
    "__init__": 0,
    "formats.__init__": 0,
    "registry.__init__": 0,
    "blobs.__init__": 0,
    "fs.__init__": 0,
    "commands.__init__": 0,
}


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_of(module: str) -> str:
    return module.rpartition(".")[0]


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "modelfs" or (
                node.module.startswith("modelfs.") and node.module[8:] in PACKAGE_RANK
            ):
                prefix = node.module[8:]
                found.update(f"{prefix}.{a.name}" if prefix else a.name for a in node.names)
            elif node.module.startswith("modelfs."):
                found.add(node.module[8:])
            elif node.module.split(".")[0] == "pyfuse3":
                found.add("pyfuse3")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("modelfs."):
                    found.add(a.name[8:])
                elif a.name.split(".")[0] == "pyfuse3":
                    found.add("pyfuse3")
    return found


def test_every_module_has_a_rank():
    modules = {module_of(p) for p in sources()}
    assert modules <= set(RANK), f"modules without a rank: {modules - set(RANK)}"
    assert not set(RANK) - modules, f"ranks of modules that are gone: {set(RANK) - modules}"


def test_imports_only_go_down():
    wrong = []
    for path in sources():
        me = module_of(path)
        for dep in imports_of(path) - {"pyfuse3", "__version__"}:
            if dep not in RANK:
                wrong.append(f"{me} imports {dep}, which is not a module")
            elif RANK[dep] > RANK[me]:
                wrong.append(f"{me} (rank {RANK[me]}) imports {dep} (rank {RANK[dep]})")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_packages_import_only_their_own_layer_or_lower():
    wrong = []
    for path in sources():
        me = module_of(path)
        if me == "__main__":
            continue  # python -m modelfs: the entry point, above everything
        for dep in imports_of(path) - {"pyfuse3", "__version__"}:
            if PACKAGE_RANK[package_of(dep)] > PACKAGE_RANK[package_of(me)]:
                wrong.append(f"{me} imports {dep}")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_only_fuse_ops_imports_pyfuse3():
    users = sorted(module_of(p) for p in sources() if "pyfuse3" in imports_of(p))
    assert users == ["fs.fuse_ops"]


HTTP_LIBRARIES = {"httpx", "http.client", "httpcore", "urllib3", "requests"}


def http_libraries_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in HTTP_LIBRARIES)
        elif isinstance(node, ast.ImportFrom) and node.module in HTTP_LIBRARIES:
            found.add(node.module)
    return found


def test_only_the_registry_speaks_http():
    # What HTTP libraries raise is translated once, in registry/ (registry.translate): a
    # module elsewhere that imported one would meet their exceptions untranslated.
    users = {module_of(p): http_libraries_of(p) for p in sources()}
    outside = {m: libs for m, libs in users.items() if libs and package_of(m) != "registry"}
    assert not outside, f"HTTP libraries imported outside registry/: {outside}"

"""A model's files (``formats.files.ModelTree``) as the directories of its tag directory.

Every kind but classic Ollama shows its ``ModelTree``: nested directories, each file at
its path. A file that is one whole layer (``ModelFile.layer``) is served as a layer file
always was (one inode per blob, a symlink once the blob is complete); any other file (a
tar member, a safetensors file assembled from Ollama's tensor blobs, the manifest) is
read through the blob door (``Blobs.open``) with an inode of its own per manifest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from modelfs.flight import KeyedLock
from modelfs.formats.files import ModelFile, ModelTree

# A directory's entries by name: a file, or None for a subdirectory.
Entries = dict[str, ModelFile | None]
READ_ONLY_PERM = 0o444
# Laid-out models kept (the most recently shown): a tag that re-resolves to the same
# manifest, or another tag of it, is not laid out again.
MAX_LAYOUTS = 64


def directories(tree: ModelTree) -> dict[str, Entries]:
    """Every directory of the model ("" is the tag directory) with its sorted entries."""
    dirs: dict[str, Entries] = {"": {}}
    for f in tree.files:
        parts = f.path.split("/")
        for i in range(len(parts) - 1):
            parent, here = "/".join(parts[:i]), "/".join(parts[: i + 1])
            dirs.setdefault(parent, {})[parts[i]] = None
            dirs.setdefault(here, {})
        dirs.setdefault("/".join(parts[:-1]), {})[parts[-1]] = f
    return {d: dict(sorted(entries.items())) for d, entries in dirs.items()}


def perm_of(file: ModelFile) -> int:
    """Read-only; the artifact's execute bits kept (a script stays runnable)."""
    return READ_ONLY_PERM | ((file.mode or 0) & 0o111)


class Layouts:
    """Each model's directories by key (repository, manifest digest): one layout at a time
    per key, while other lookups of it wait for that one; the last ``max_layouts`` kept."""

    def __init__(self, max_layouts: int = MAX_LAYOUTS) -> None:
        self._done: OrderedDict[Hashable, tuple[ModelTree, dict[str, Entries]]] = OrderedDict()
        self._lock: KeyedLock[Hashable] = KeyedLock()
        self.max_layouts = max_layouts

    async def get(
        self, key: Hashable, lay_out: Callable[[], Awaitable[ModelTree]]
    ) -> dict[str, Entries]:
        async with self._lock.hold(key):
            found = self._done.get(key)
            if found is None:
                tree = await lay_out()
                found = self._done[key] = (tree, directories(tree))
                while len(self._done) > self.max_layouts:
                    self._done.popitem(last=False)
            else:
                self._done.move_to_end(key)
            return found[1]

    def tree(self, key: Hashable) -> ModelTree | None:
        """The files of a model laid out under ``key`` and still kept, else None."""
        found = self._done.get(key)
        return None if found is None else found[0]

    def drop(self, key: Hashable) -> None:
        """Forget a model's layout (one built from bytes its blobs then contradicted): the
        next lookup or open lays it out again."""
        self._done.pop(key, None)

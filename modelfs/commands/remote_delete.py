"""``modelfs rm NAME --remote``: remove a tag from its registry, and that tag only.

A registry that deletes tags (OCI distribution spec 1.1) is asked to delete the tag
alone. One that cannot (docker-registry 2.8 answers 400, or 405 where deletes are off)
deletes only manifests, by digest, and every tag naming a manifest goes with it: modelfs
then lists the repository's tags and deletes the manifest only if no other tag names it.
Otherwise it refuses, naming those tags; ``--all-tags`` deletes the manifest with every
tag that names it, on purpose.

Such a registry offers no "delete unless another tag names it": a tag pointed at the
same manifest between the check and the delete goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfs.errors import ModelfsError, ModelNotFound
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name
from modelfs.registry.client import Registry

# Other tags named in a refusal; past this, "and N more".
SHOWN_TAGS = 10


@dataclass(frozen=True)
class RemoteDeletion:
    """What ``delete_remote`` did: the manifest the tag named, and whether that manifest
    itself was deleted (False: only the tag went, the registry deleting tags alone)."""

    digest: Digest
    manifest_deleted: bool


async def delete_remote(
    registry: Registry, name: Name, *, all_tags: bool = False
) -> RemoteDeletion:
    """Delete ``name``'s tag on its registry; with ``all_tags``, its manifest and every tag
    naming it. Raises ``ModelfsError`` (nothing deleted) when the registry can delete the
    tag only with its manifest and other tags name that manifest."""
    digest = await registry.tag_digest(name, name.tag)
    if digest is None:
        raise ModelNotFound(f"model {name} not found on {name.host}")
    if name.digest is not None and name.digest != digest:
        raise ModelNotFound(f"model {name} not found on {name.host} (the tag names {digest})")
    if not all_tags:
        if await registry.delete_tag(name):
            return RemoteDeletion(digest, manifest_deleted=False)
        others = [
            tag
            for tag in await registry.tags(name)
            if tag != name.tag and await registry.tag_digest(name, tag) == digest
        ]
        if others:
            raise ModelfsError(
                f"{name.host} cannot delete the tag {name.tag} alone, only its manifest "
                f"{digest.short}, and {_tags_shown(others)} "
                f"{'names' if len(others) == 1 else 'name'} it too: nothing deleted "
                "(--all-tags deletes the manifest with every tag naming it)"
            )
    await registry.delete_manifest(name, digest)
    return RemoteDeletion(digest, manifest_deleted=True)


def _tags_shown(tags: list[str]) -> str:
    shown = ", ".join(sorted(tags)[:SHOWN_TAGS])
    more = len(tags) - SHOWN_TAGS
    word = "tag" if len(tags) == 1 else "tags"
    return f"{word} {shown}" + (f" and {more} more" if more > 0 else "")

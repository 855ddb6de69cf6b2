"""A chunk index published beside a model: an OCI artifact whose ``subject`` is the model.

The model's manifest and digest stay as they are (the SOCI idea). ``modelfs index``
pushes an OCI image manifest with ``artifactType`` = the chunk index media type,
the empty config, one layer (the chunk index, in the same format as an index layer
inside a manifest) and ``subject`` = the model's manifest. Readers find it through
the referrers API (``GET /v2/<repo>/referrers/<digest>``, an image index of the
manifests whose subject is ``digest``) or, on a registry without it, through the
referrers tag schema of the OCI distribution spec 1.1: tag ``sha256-<hex>`` holds
such an image index, kept by the clients that push referrers.

Everything here is pure: build, parse and validate what a registry sends back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from modelfs.errors import DigestInvalid, ManifestInvalid
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import (
    MEDIA_TYPE_CHUNK_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    Layer,
    Manifest,
    parse_manifest,
)

MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
ARTIFACT_TYPE = MEDIA_TYPE_CHUNK_INDEX
SOURCE = "published-index"
# Referrers looked at for one model, at most (a registry could list thousands).
MAX_REFERRERS = 16
MAX_INDEX_DOCUMENT_BYTES = 4 << 20


@dataclass(frozen=True)
class Referrer:
    digest: Digest
    size: int
    media_type: str
    artifact_type: str | None


def referrers_tag(subject: Digest) -> str:
    """The referrers tag schema's tag for ``subject``: ``<algorithm>-<hex>``."""
    return subject.filename  # sha256-<hex>


def empty_config() -> Layer:
    return Layer(Digest.of_bytes(EMPTY_CONFIG), MEDIA_TYPE_OCI_EMPTY, len(EMPTY_CONFIG))


def build_index_artifact(subject: Manifest, index: Layer) -> bytes:
    """The artifact manifest publishing ``index`` (a chunk index blob) beside ``subject``."""
    config = empty_config()
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": config.media_type,
            "digest": str(config.digest),
            "size": config.size,
        },
        "layers": [
            {"mediaType": index.media_type, "digest": str(index.digest), "size": index.size}
        ],
        "subject": {
            "mediaType": subject.media_type,
            "digest": str(subject.digest),
            "size": len(subject.raw),
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_index_artifact(raw: bytes, subject: Digest) -> Layer:
    """The chunk index layer of an artifact that must name ``subject`` as its subject."""
    manifest = parse_manifest(raw)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ManifestInvalid("invalid chunk index artifact: not JSON") from None
    named = doc.get("subject") if isinstance(doc, dict) else None
    if not isinstance(named, dict) or named.get("digest") != str(subject):
        raise ManifestInvalid(f"the chunk index artifact is not about {subject}")
    layers = manifest.layers_of_type(MEDIA_TYPE_CHUNK_INDEX)
    if len(layers) != 1:
        raise ManifestInvalid("invalid chunk index artifact: it has no single chunk index layer")
    return layers[0]


def parse_referrers(raw: bytes, artifact_type: str) -> list[Referrer]:
    """The manifests of ``artifact_type`` an image index of referrers lists (at most
    ``MAX_REFERRERS``, newest last as listed)."""
    if len(raw) > MAX_INDEX_DOCUMENT_BYTES:
        raise ManifestInvalid("invalid referrers: the index is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise ManifestInvalid("invalid referrers: not JSON") from None
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ManifestInvalid("invalid referrers: no list of manifests")
    found: list[Referrer] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("artifactType") != artifact_type:
            continue
        size = entry.get("size")
        media_type = entry.get("mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= 4 << 20:
            continue
        if not isinstance(media_type, str):
            continue
        try:
            digest = Digest.parse(entry.get("digest"))
        except DigestInvalid:
            continue
        found.append(Referrer(digest, size, media_type, artifact_type))
    return found[-MAX_REFERRERS:]


def add_referrer(index: bytes | None, artifact: bytes) -> bytes:
    """The referrers tag schema's image index with ``artifact`` listed (``index``: the one
    the tag held, None if none). Entries it cannot read are kept as they were."""
    manifests: list[object] = []
    if index is not None:
        try:
            doc = json.loads(index)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            manifests = list(doc["manifests"])
    digest = str(Digest.of_bytes(artifact))
    manifests = [m for m in manifests if not (isinstance(m, dict) and m.get("digest") == digest)]
    manifests.append(
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": digest,
            "size": len(artifact),
            "artifactType": ARTIFACT_TYPE,
        }
    )
    doc = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": manifests}
    return json.dumps(doc, separators=(",", ":")).encode()

"""The registry client reads every answer's body through one bounded reader: a manifest, a
chunksums body or a token answer one byte over its bound is refused, one at the bound is
taken, and an error status keeps the registry's own words."""

from __future__ import annotations

import httpx
import pytest

from modelfs.errors import ManifestInvalid, RegistryError, Unauthorized
from modelfs.formats.chunksums import MAX_CHUNKSUMS_BYTES
from modelfs.formats.digest import Digest
from modelfs.formats.manifest import MAX_MANIFEST_BYTES
from modelfs.formats.names import parse_name
from modelfs.registry.client import Registry
from modelfs.registry.sender import TOKEN_BODY_BYTES

# A body left before its end (as a bounded read must leave one) leaves httpx's own nested
# async generators (BoundAsyncStream, the transport's stream) unexhausted; trio reports each
# when it is collected. The response itself is closed.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

NAME = parse_name("registry.test/library/m:1")
BLOB = Digest("ab" * 32)


async def asking(handler) -> Registry:
    registry = Registry()
    await registry.sender.client.aclose()
    registry.sender.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return registry


@pytest.mark.parametrize("extra", [0, 1])
async def test_a_manifest_over_its_bound_is_refused(extra: int) -> None:
    body = b"x" * (MAX_MANIFEST_BYTES + extra)
    registry = await asking(lambda request: httpx.Response(200, stream=httpx.ByteStream(body)))
    try:
        if extra:
            with pytest.raises(ManifestInvalid, match=f"is over {MAX_MANIFEST_BYTES} bytes"):
                await registry.get_manifest(NAME)
        else:
            assert await registry.get_manifest(NAME) == body
    finally:
        await registry.aclose()


@pytest.mark.parametrize("extra", [0, 1])
async def test_chunksums_over_their_bound_are_refused(extra: int) -> None:
    body = b"x" * (MAX_CHUNKSUMS_BYTES + extra)
    registry = await asking(lambda request: httpx.Response(200, stream=httpx.ByteStream(body)))
    try:
        if extra:
            with pytest.raises(ManifestInvalid, match=f"more than {MAX_CHUNKSUMS_BYTES} bytes"):
                await registry.chunksums(NAME, BLOB)
        else:
            answer = await registry.chunksums(NAME, BLOB)
            assert answer is not None and answer.body == body
    finally:
        await registry.aclose()


async def test_a_token_answer_over_its_bound_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, stream=httpx.ByteStream(b" " * (TOKEN_BODY_BYTES + 1)))
        challenge = 'Bearer realm="https://registry.test/token",service="registry.test"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    registry = await asking(handler)
    try:
        with pytest.raises(Unauthorized, match="the answer is too large"):
            await registry.get_manifest(NAME)
    finally:
        await registry.aclose()


async def test_an_error_status_keeps_the_registrys_words() -> None:
    words = b'{"errors": [{"code": "DENIED", "message": "quota of 3 models reached"}]}'
    registry = await asking(
        lambda request: httpx.Response(400, stream=httpx.ByteStream(words + b" " * (64 << 10)))
    )
    try:
        with pytest.raises(RegistryError, match="answered 400: quota of 3 models reached"):
            await registry.put_manifest(NAME, b"{}")
    finally:
        await registry.aclose()

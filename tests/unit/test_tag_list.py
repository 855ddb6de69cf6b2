"""A registry's tag list, whole or in pages (``Link: <...>; rel="next"``): the list
``rm --remote`` checks before deleting a manifest, so a tag on a later page must not be missed."""

from __future__ import annotations

import httpx
import pytest

from modelfs.errors import ModelNotFound, RegistryError
from modelfs.formats.names import parse_name
from modelfs.registry.client import Registry

NAME = parse_name("registry.test/library/m:tmp")
TAGS = ["keep", "tmp", "v1", "v2", "v3"]


def paging(per_page: int, next_host: str | None = None):
    """A registry that answers ``tags/list`` ``per_page`` tags at a time, OCI style."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.url.path == "/v2/library/m/tags/list"
        last = request.url.params.get("last")
        start = TAGS.index(last) + 1 if last else 0
        page = TAGS[start : start + per_page]
        headers = {}
        if start + per_page < len(TAGS):
            target = f"/v2/library/m/tags/list?n={per_page}&last={page[-1]}"
            if next_host is not None:
                target = f"https://{next_host}{target}"
            headers["Link"] = f'<{target}>; rel="next"'
        return httpx.Response(200, json={"name": "library/m", "tags": page}, headers=headers)

    return handler, seen


async def tags_from(handler) -> list[str]:
    registry = Registry()
    await registry.sender.client.aclose()
    registry.sender.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        return await registry.tags(NAME)
    finally:
        await registry.aclose()


async def test_every_page_of_a_paged_tag_list_is_read() -> None:
    handler, seen = paging(2)
    assert await tags_from(handler) == TAGS
    assert len(seen) == 3


async def test_a_whole_tag_list_is_one_request() -> None:
    handler, seen = paging(100)
    assert await tags_from(handler) == TAGS
    assert len(seen) == 1


async def test_a_next_page_on_another_host_is_refused() -> None:
    handler, seen = paging(2, next_host="elsewhere.test")
    with pytest.raises(RegistryError, match="another host"):
        await tags_from(handler)
    assert all(url.startswith("https://registry.test/") for url in seen)


async def test_a_repository_the_registry_does_not_know_has_no_tags() -> None:
    assert await tags_from(lambda request: httpx.Response(404)) == []


@pytest.mark.parametrize("body", [b"not json", b'{"tags": "keep"}', b'{"tags": [1]}'])
async def test_a_tag_list_that_is_not_one_is_an_error(body: bytes) -> None:
    with pytest.raises(RegistryError, match="tags of library/m"):
        await tags_from(lambda request: httpx.Response(200, content=body))


async def listing_from(handler, max_pages: int = 10) -> list[str] | None:
    registry = Registry()
    await registry.sender.client.aclose()
    registry.sender.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    try:
        return await registry.repository_tags(NAME, max_pages)
    finally:
        await registry.aclose()


async def test_a_mount_listing_reads_at_most_its_pages() -> None:
    handler, seen = paging(2)
    assert await listing_from(handler, max_pages=2) == TAGS[:4]
    assert len(seen) == 2


async def test_name_unknown_is_model_not_found_and_other_404s_are_no_listing() -> None:
    def unknown(request: httpx.Request) -> httpx.Response:
        body = {"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]}
        return httpx.Response(404, json=body)

    with pytest.raises(ModelNotFound, match=r"registry\.test has no repository library/m"):
        await listing_from(unknown)
    assert await listing_from(lambda r: httpx.Response(404, text="404 page not found")) is None
    assert await listing_from(lambda r: httpx.Response(405)) is None

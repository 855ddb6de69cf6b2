"""Where a request goes: a registry's URLs, and for reads its mirrors first.

``Endpoints`` knows each host's scheme (plain http, https, the ``tls_hosts``), the URLs of
manifests and blobs, the mirrors configured for a host and which of them are resting after
a failure, whose credentials a read at a mirror carries (its own, or the origin's where the
configuration lends them), and runs a read against the mirrors in order, then the host
(``first_answer``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from modelfs.errors import ModelfsError, ModelNotFound, ShuttingDown
from modelfs.formats.digest import Digest
from modelfs.formats.names import Name, scheme_for
from modelfs.registry.origins import base_of, netloc, origin_of
from modelfs.registry.settings import RegistryConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# A mirror that failed is skipped for this long before it is tried again.
MIRROR_BACKOFF_SECONDS = 30.0


class Endpoints:
    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._mirror_down_until: dict[str, float] = {}

    def reconfigure(self, config: RegistryConfig) -> None:
        """Other hosts, schemes and mirrors from now on; every mirror is tried again."""
        self.config = config
        self._mirror_down_until.clear()

    # -- URLs ---------------------------------------------------------------------------

    def base_url(self, name: Name) -> str:
        if name.scheme is not None:
            return f"{name.scheme}://{name.host.lower()}"
        return self.host_url(name.host)

    def host_url(self, host: str) -> str:
        host = host.lower()
        if any(host == h.lower() for h in self.config.tls_hosts):
            return f"https://{host}"
        return f"{scheme_for(host, self.config.insecure_hosts)}://{host}"

    def manifest_url(
        self, name: Name, reference: str | None = None, base: str | None = None
    ) -> str:
        ref = reference or (str(name.digest) if name.digest else name.tag)
        return f"{base or self.base_url(name)}/v2/{name.repository}/manifests/{ref}"

    def blob_url(self, name: Name, digest: Digest, base: str | None = None) -> str:
        return f"{base or self.base_url(name)}/v2/{name.repository}/blobs/{digest}"

    # -- whose credentials ----------------------------------------------------------------------

    def _lends_origin_credentials(self, base: str, name: Name) -> bool:
        return (name.host.lower(), base.rstrip("/")) in self.config.origin_credentials

    def auth_host(self, base: str, name: Name) -> str:
        """Whose credentials a read of ``name`` at ``base`` carries: the host it talks to, but
        the origin's for a mirror configured with ``credentials = "origin"`` for this host."""
        if self._lends_origin_credentials(base, name):
            return name.host.lower()
        return netloc(base)

    def given_for(self, base: str, name: Name) -> str:
        """The base URL the credentials of a read of ``name`` at ``base`` were given for: the
        origin's for a mirror that lends them, else ``base`` itself."""
        if self._lends_origin_credentials(base, name):
            return base_of(self.base_url(name))
        return base_of(base)

    def handed_out_given_for(self, name: Name, url: str) -> str | None:
        """Whose credentials a URL the registry of ``name`` handed out (an upload ``Location``)
        carries: on the registry's own host and port, the registry's, as given (so an https
        registry's never go to an http location); elsewhere (None), those of the URL's host.
        Its host and port is that of the registry also when the URL spells the default port
        out (``https://host:443``), or names https's port over http (which then gets nothing)."""
        base = self.base_url(name)
        if netloc(url) == netloc(base) or origin_of(url)[1:] == origin_of(base)[1:]:
            return base_of(base)
        return None

    # -- mirrors ------------------------------------------------------------------------------

    def read_bases(self, name: Name) -> list[str]:
        """Where reads of ``name`` go, in order: the host's mirrors that are not resting, then the host."""
        now = time.monotonic()
        mirrors = self.config.mirrors.get(name.host.lower(), ())
        up = [m.rstrip("/") for m in mirrors if self._mirror_down_until.get(m, 0.0) <= now]
        return [*up, self.base_url(name)]

    async def first_answer(self, name: Name, read: Callable[[str, bool], Awaitable[T]]) -> T:
        """``read(base, at_origin)`` at each mirror of ``name``'s host in turn (a mirror that
        fails rests), then at the host itself, whose failure is the caller's."""
        bases = self.read_bases(name)
        for base in bases[:-1]:
            try:
                return await read(base, False)
            except ShuttingDown:
                raise  # not the mirror's failure, and no endpoint is worth asking now
            except ModelfsError as e:
                self._mirror_failed(base, name, e)
        return await read(bases[-1], True)

    def distrust_mirrors(self, name: Name, what: str) -> None:
        """Bytes of ``name`` (``what``) did not match their digest: read from the origin for a
        while. A mirror is trusted for nothing but bytes, and not for those once they fail."""
        now = time.monotonic()
        for base in self.config.mirrors.get(name.host.lower(), ()):
            base = base.rstrip("/")
            if self._mirror_down_until.get(base, 0.0) <= now:
                log.warning(
                    "%s of %s did not match; mirror %s may have sent them: reading from the "
                    "origin for %.0fs",
                    what,
                    name,
                    base,
                    MIRROR_BACKOFF_SECONDS,
                )
            self._mirror_down_until[base] = now + MIRROR_BACKOFF_SECONDS

    def _mirror_failed(self, base: str, name: Name, e: ModelfsError) -> None:
        if isinstance(e, ModelNotFound):
            # A mirror without the model is normal (it may not have it yet): ask the next one.
            log.info("mirror %s does not have %s; using the next endpoint", base, name)
            return
        log.warning("mirror %s failed for %s (%s); using the next endpoint", base, name, e)
        self._mirror_down_until[base] = time.monotonic() + MIRROR_BACKOFF_SECONDS

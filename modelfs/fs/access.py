"""Who asks, and what they may reach: the mount's ``allow_other`` policy.

Requests for other users of an ``allow_other`` mount resolve and fetch without the
owner's credentials (unless ``share_credentials``) and reach only the registries
``Access`` allows them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Access:
    """Who may make the daemon do what (the mount's ``allow_other`` policy)."""

    owner_uid: int
    share_credentials: bool = False  # -o share_credentials: others' requests carry the owner's
    # -o registries=…: the only hosts any lookup may reach (None: any)
    registries: frozenset[str] | None = None
    # Under allow_other without -o registries: the hosts other users' lookups may reach
    # (those in the config file and those in the cache), asked afresh for each lookup.
    others_may_reach: Callable[[], Collection[str]] | None = None

    def caller(self, uid: int | None) -> Caller:
        owner = uid is None or uid == self.owner_uid
        return Caller(owner=owner, anonymous=not owner and not self.share_credentials)

    def may_reach(self, host: str, caller: Caller) -> bool:
        host = host.lower()
        if self.registries is not None and host not in self.registries:
            return False
        if caller.owner or self.registries is not None or self.others_may_reach is None:
            return True
        return host in {h.lower() for h in self.others_may_reach()}


@dataclass(frozen=True)
class Caller:
    owner: bool = True
    anonymous: bool = False  # without the owner's credentials


OWNER = Caller()

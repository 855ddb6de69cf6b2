"""``-o`` option parsing for the mount."""

from __future__ import annotations

import pytest

from modelfs.daemon import parse_mount_options
from modelfs.errors import UsageError


def test_known_options_map_to_settings():
    got = parse_mount_options(
        ["verify=deferred,links=no", "streams=6,lookup_ttl=2.5", "allow_other"]
    )
    assert got == {
        "deferred": True,
        "links": False,
        "max_streams": 6,
        "lookup_ttl_seconds": 2.5,
        "allow_other": True,
    }
    assert parse_mount_options(["links=yes"]) == {"links": True}


def test_options_mount8_passes_are_ignored():
    assert parse_mount_options(["rw,nodev,nosuid,_netdev,x-systemd.automount"]) == {}


@pytest.mark.parametrize(
    ("opt", "why"),
    [
        ("links=maybe", "links takes yes or no"),
        ("verify=sometimes", "verify takes strict or deferred"),
        ("streams=many", "needs a number"),
        ("bogus", "unknown mount option"),
    ],
)
def test_bad_options_are_one_line_errors(opt, why):
    with pytest.raises(UsageError, match=why):
        parse_mount_options([opt])

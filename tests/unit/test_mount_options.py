"""``-o`` option parsing for the mount."""

from __future__ import annotations

import pytest

from modelfs.errors import UsageError
from modelfs.fs.daemon import parse_mount_options


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
        ("streams=many", "streams takes a whole number"),
        ("bogus", "unknown mount option"),
    ],
)
def test_bad_options_are_one_line_errors(opt, why):
    with pytest.raises(UsageError, match=why):
        parse_mount_options([opt])


def test_mount_gives_the_daemon_every_registry_setting(tmp_path, monkeypatch):
    """-o insecure_registry (fstab), --insecure-registry, --ca-file, --key and the config file
    all reach the registry client the daemon builds."""
    from modelfs.commands import cli

    config = tmp_path / "config.toml"
    config.write_text(
        '[[registry]]\nhost = "tls.lan:5000"\ntls = true\n'
        '[[mirror]]\nhost = "registry.ollama.ai"\nendpoints = ["http://mirror.lan"]\n'
    )
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    seen = []
    monkeypatch.setattr("trio.run", lambda fn, opts, ready: seen.append(opts))
    monkeypatch.delenv("MODELFS_INSECURE_REGISTRIES", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "mnt").mkdir()
    cli.main(
        [
            "mount", str(tmp_path / "mnt"), "--foreground", "--cache", str(tmp_path / "cache"),
            "-o", "insecure_registry=fstab.lan", "--insecure-registry", "flag.lan",
            "--ca-file", str(ca), "--key", str(tmp_path / "k"), "--config", str(config),
        ]
    )  # fmt: skip
    (opts,) = seen
    reg = opts.registry
    assert set(reg.insecure_hosts) == {"fstab.lan", "flag.lan"}
    assert reg.tls_hosts == ("tls.lan:5000",)
    assert reg.ca_file == str(ca)
    assert reg.key_path == tmp_path / "k"
    assert reg.mirrors == {"registry.ollama.ai": ("http://mirror.lan",)}

"""What a command costs before it does anything: the modules it imports, and the TLS trust
store it reads.

A command imports what it needs when it runs: ``modelfs --help``, ``ls`` or ``completion``
load no HTTP client, no trio and no FUSE (importing them all took a third of a second before
anything happened). The system's trust store is read at the first TLS connection, not when
a registry client is made: a pull from a plain-http registry never reads it. The pull's own
imports are checked against a real registry in tests/component/test_startup_pull.py.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support.tls import generate_ca, generate_tls

from modelfs.errors import RegistryError
from modelfs.registry.sender import Sender
from modelfs.registry.settings import RegistryConfig

# What a command that speaks to no registry and mounts nothing must not load.
HEAVY = (
    "httpx",
    "trio",
    "pyfuse3",
    "cryptography",
    "modelfs.registry.client",
    "modelfs.fs.daemon",
    "logging.handlers",  # the daemon's log file
)


def imported_by(*argv: str, cache: Path) -> set[str]:
    """The modules ``modelfs ARGV`` imported, as ``python -X importtime`` lists them."""
    # The cache, and the runtime directory `ps` and `status` look for mounts in, empty.
    env = {**os.environ, "OLLAMA_MODELS": str(cache), "XDG_RUNTIME_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelfs", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("import time:")]
    assert lines, result.stderr
    # "import time:  self [us] | cumulative | imported package", nested ones indented.
    return {ln.rsplit("|", 1)[1].strip() for ln in lines}


@pytest.mark.parametrize(
    "argv",
    [
        ("--help",),
        ("pull", "--help"),
        ("mount", "--help"),
        ("help", "push"),
        ("ls",),
        ("ls", "--json"),
        ("du",),
        ("ps",),
        ("status",),
        ("completion", "bash"),
        ("manpage",),
    ],
    ids=" ".join,
)
def test_a_command_that_needs_no_registry_imports_no_http_trio_or_fuse(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    modules = imported_by(*argv, cache=tmp_path)
    assert "modelfs.commands.parser" in modules  # the check itself sees modelfs's imports
    loaded = sorted(m for m in HEAVY if m in modules)
    assert not loaded, f"modelfs {' '.join(argv)} imported {loaded}: its start-up is slower"


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> None:
    """A TLS handshake between the two contexts in memory, for the name ``localhost``."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {c: False, s: False}
    for _ in range(20):
        for obj in (c, s):
            if not done[obj]:
                try:
                    obj.do_handshake()
                    done[obj] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("the in-memory TLS handshake did not finish")


def test_a_registry_client_reads_the_trust_store_at_its_first_tls_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = generate_tls(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_cert))  # as a user may say which CA to trust
    sender = Sender(RegistryConfig())
    assert sender.ssl.cert_store_stats()["x509_ca"] == 0, (
        "the trust store was read when the client was made, before any https request"
    )
    _handshake(sender.ssl, tls.server_context())
    assert sender.ssl.cert_store_stats()["x509_ca"] == 1


def test_the_deferred_trust_context_is_configured_as_the_default_one() -> None:
    made = Sender(RegistryConfig()).ssl
    default = ssl.create_default_context()
    for setting in (
        "protocol",
        "verify_mode",
        "check_hostname",
        "verify_flags",
        "options",
        "minimum_version",
        "maximum_version",
        "keylog_filename",
    ):
        assert getattr(made, setting) == getattr(default, setting), setting
    assert made.get_ciphers() == default.get_ciphers()


def test_a_deferred_trust_store_still_refuses_a_certificate_it_does_not_vouch_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = generate_tls(tmp_path / "tls")
    other = generate_ca(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other.cert))
    sender = Sender(RegistryConfig())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(sender.ssl, tls.server_context())


def test_a_ca_file_that_does_not_read_still_fails_when_the_client_is_made(tmp_path: Path) -> None:
    """Given on purpose, it is read at once: a mistake shows at start (or at a SIGHUP, which
    then keeps the configuration in use), not at the first request."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(RegistryError, match="cannot use the CA file"):
        Sender(RegistryConfig(ca_file=str(bad)))

"""Throwaway TLS material for loopback servers: a CA of our own and a server certificate it signed.

``generate_tls(directory)`` writes ``ca.pem``, ``ca-key.pem``, ``server.pem`` and
``server-key.pem`` (PEM, EC P-256) and returns their paths; the server certificate is valid for
``DNS:localhost`` and ``IP:127.0.0.1``. ``generate_ca(directory)`` makes another CA that has
signed nothing, for "the client trusts the wrong CA" tests.

httpx 0.28 deprecates ``verify=<path>``: pass ``verify=material.ssl_context()`` instead.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path
    key: Path

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass(frozen=True)
class TLSMaterial:
    ca_cert: Path
    cert: Path
    key: Path
    ca_key: Path

    @property
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority(self.ca_cert, self.ca_key)

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this material's CA only."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    days: int,
) -> x509.CertificateBuilder:
    """What every certificate here has: validity, basic constraints, key usage, SKI."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def self_signed(
    key: ec.EllipticCurvePrivateKey, common_name: str, *, ca: bool, days: int = 30
) -> x509.Certificate:
    """A self-signed certificate for ``key`` (a CA's, or a token signer's)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _builder(name, name, key, ca=ca, days=days).sign(key, hashes.SHA256())


def generate_ca(directory: Path, name: str = "modelfs test CA") -> CertificateAuthority:
    """A new CA (``ca.pem`` and ``ca-key.pem`` in ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, name, ca=True, days=365)
    result = CertificateAuthority(directory / "ca.pem", directory / "ca-key.pem")
    result.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(result.key, key)
    return result


def generate_tls(
    directory: Path,
    *,
    hosts: tuple[str, ...] = DEFAULT_HOSTS,
    ca: CertificateAuthority | None = None,
) -> TLSMaterial:
    """A server certificate for ``hosts`` (names or IP addresses), signed by ``ca`` or a new CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or generate_ca(directory)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = _load_key(ca.key)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (
        _builder(subject, ca_cert.subject, key, ca=False, days=30)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    material = TLSMaterial(
        ca_cert=ca.cert,
        cert=directory / "server.pem",
        key=directory / "server-key.pem",
        ca_key=ca.key,
    )
    material.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(material.key, key)
    return material

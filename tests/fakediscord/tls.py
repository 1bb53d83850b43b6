"""Self-signed TLS certificate for the fake voice gateway (``wss://127.0.0.1:PORT``)."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfSignedCert:
    """A certificate (also its own trust anchor) and key, written as PEM files."""

    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this certificate."""
        return ssl.create_default_context(cafile=str(self.cert_path))


def generate_self_signed_cert(directory: Path, host: str = "127.0.0.1") -> SelfSignedCert:
    """Write ``cert.pem``/``key.pem`` for ``host`` (an IP) into ``directory``.

    The certificate is a self-signed CA certificate with ``subjectAltName=IP:host``,
    key usage and key identifiers, so it verifies even with ``VERIFY_X509_STRICT``
    (the default flag since Python 3.13).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fakediscord {host}")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    _log.debug("wrote self-signed certificate for %s to %s", host, cert_path)
    return SelfSignedCert(cert_path=cert_path, key_path=key_path)


def trust_cert_in_process(cert_path: Path | str) -> None:
    """Make this process's default aiohttp client TLS context trust ``cert_path``.

    discord.py's HTTP session uses ``aiohttp.TCPConnector(limit=0)`` with the default
    ``ssl=True``, i.e. aiohttp's module-level verified context, which aiohttp builds
    **at import time** with ``ssl.create_default_context()``. Setting ``SSL_CERT_FILE``
    after aiohttp was imported therefore has no effect in-process; adding the
    certificate to that shared context does (it is additive: the system CAs stay).
    """
    from aiohttp import connector

    ctx = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)
    if not isinstance(ctx, ssl.SSLContext):
        raise RuntimeError(
            "aiohttp has no module-level verified SSL context; pass "
            "connector=aiohttp.TCPConnector(ssl=fake.client_ssl_context()) to the client instead"
        )
    ctx.load_verify_locations(cafile=str(cert_path))

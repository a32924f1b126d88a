"""TLS + HTTP/2 for the local vendor fakes: a throwaway CA and a hypercorn server on 127.0.0.1.

Stable API (other vendor fakes import it)::

    ca_file, cert_file, key_file = make_ca(directory)
    async with tls_server(app) as (base_url, ca_file):
        ...  # base_url == "https://127.0.0.1:<port>", ca_file: str (trust it to reach the server)

The server offers ALPN ``h2`` (then ``http/1.1``) and answers only on loopback.

Known hypercorn 0.18 quirk: over HTTP/2, if the app sends its response before it has read the whole
request body, late DATA frames for the finished stream raise ``KeyError`` inside hypercorn and the
whole connection (every other stream on it) is dropped. A fake must read the body first
(``await request.body()``) even when it is about to refuse the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypercorn.asyncio import serve
from hypercorn.config import Config

HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 10.0
log = logging.getLogger("tests.fakes.tls")


def make_ca(directory: Path | str) -> tuple[str, str, str]:
    """Write a self-signed CA and a server certificate for 127.0.0.1/localhost into ``directory``.

    Returns ``(ca_file, cert_file, key_file)`` as string paths (PEM): trust ``ca_file`` in the
    client; serve with ``cert_file`` (leaf certificate) and ``key_file`` (its private key).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(hours=1)
    not_after = now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mqttpush test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(HOST)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(ca_file), str(cert_file), str(key_file)


@contextlib.asynccontextmanager
async def tls_server(app: Any, *, cert_dir: Path | str | None = None) -> AsyncIterator[tuple[str, str]]:
    """Serve the ASGI ``app`` over TLS (ALPN h2, http/1.1) on 127.0.0.1, an ephemeral port.

    Yields ``(base_url, ca_file)``. Certificates go to ``cert_dir`` (a temporary directory, removed
    on exit, when not given). The server is accepting TLS connections when the block starts; on exit
    it shuts down, and an error the server died of is raised.
    """
    with contextlib.ExitStack() as stack:
        if cert_dir is None:
            cert_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mqttpush-tls-"))
        ca_file, cert_file, key_file = make_ca(cert_dir)

        # Bind and listen before hypercorn starts, so the port is known and early connects queue.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((HOST, 0))
            sock.listen(128)
            port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise

        config = Config()
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket now
        config.certfile = cert_file
        config.keyfile = key_file
        config.alpn_protocols = ["h2", "http/1.1"]
        config.errorlog = log
        config.accesslog = None
        config.graceful_timeout = 1.0
        # Vendors keep one HTTP/2 connection open for as long as it is used; hypercorn's default
        # closes it every 1,000 requests, which would hide (or fake) connection churn.
        config.keep_alive_max_requests = 10_000_000

        stop = asyncio.Event()
        server = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait), name="tls_server")
        try:
            await _wait_until_serving(server, port, ca_file)
            yield f"https://{HOST}:{port}", ca_file
        finally:
            stop.set()
            await server


async def _wait_until_serving(server: asyncio.Task[None], port: int, ca_file: str) -> None:
    """One TLS handshake against the server (it completes once hypercorn accepts); fail fast if
    the server task ends first."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])

    async def handshake() -> None:
        _, writer = await asyncio.open_connection(HOST, port, ssl=context)
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    probe = asyncio.create_task(handshake())
    done, _ = await asyncio.wait(
        {server, probe}, timeout=_STARTUP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    if probe in done:
        probe.result()
        return
    probe.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await probe
    if server in done:
        server.result()
        raise RuntimeError("the TLS test server stopped before it served")
    raise TimeoutError(f"the TLS test server did not start within {_STARTUP_TIMEOUT} s")

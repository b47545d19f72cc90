"""The PostgreSQL store over TLS: verify-ca and verify-full check the server against the CA certificate
given in the config, on a throwaway server of our own with a certificate our own test CA signed."""

from __future__ import annotations

import datetime as dt
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airbyte_cdk.models import Status
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from destination_perly.destination import DestinationPerly

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if issuer is None:  # a CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:  # the server: valid for the name localhost only, so that verify-full can tell 127.0.0.1 apart
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class TlsServer:
    port: int
    ca_pem: str
    other_ca_pem: str

    def config(self, host: str, ssl_mode: str, ca_pem: str | None) -> dict[str, Any]:
        store = {
            "store_type": "postgres",
            "host": host,
            "port": self.port,
            "database": "postgres",
            "username": "perly",
            "ssl_mode": ssl_mode,
        }
        if ca_pem is not None:
            store["ca_certificate"] = ca_pem
        return {"store": store}


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.fail("PostgreSQL is not installed (scripts/ensure-system-deps.sh)")
    pg_bin = Path(bins[-1])
    home = Path(tempfile.mkdtemp(prefix="perly-tls-pg."))  # not under pytest's root-only directory
    ca_key, server_key, other_key = _key(), _key(), _key()
    ca = _certificate("Perly test CA", ca_key)
    (home / "server.crt").write_text(_pem(_certificate("localhost", server_key, ("Perly test CA", ca_key))))
    (home / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (home / "server.key").chmod(0o600)
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(home, "postgres")
        for name in ("server.crt", "server.key"):
            shutil.chown(home / name, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quiet = {"check": True, "capture_output": True}
    subprocess.run(
        [*as_postgres, pg_bin / "initdb", "-D", home / "db", "-U", "perly", "--auth=trust"], **quiet
    )
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off -c ssl=on "
        f"-c ssl_cert_file={home / 'server.crt'} -c ssl_key_file={home / 'server.key'}"
    )
    pg_ctl = [*as_postgres, pg_bin / "pg_ctl", "-D", home / "db", "-l", home / "log", "-w"]
    subprocess.run([*pg_ctl, "-o", options, "start"], **quiet)
    try:
        yield TlsServer(port, _pem(ca), _pem(_certificate("Some other CA", other_key)))
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the store's temporary CA file goes, to see it removed afterwards."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def check(config: dict[str, Any]) -> tuple[Status, str | None]:
    result = DestinationPerly().check(None, config)  # type: ignore[arg-type]  # check logs nothing
    return result.status, result.message


@pytest.mark.parametrize(("host", "ssl_mode"), [("localhost", "verify-full"), ("127.0.0.1", "verify-ca")])
def test_verifying_modes_connect_with_the_ca_that_signed_the_server_and_leave_no_file(
    tls_server: TlsServer, private_tmp: Path, host: str, ssl_mode: str
) -> None:
    status, message = check(tls_server.config(host, ssl_mode, tls_server.ca_pem))

    assert status == Status.SUCCEEDED, message
    assert list(private_tmp.glob("perly-ca-*")) == []


def test_verify_full_refuses_a_server_whose_certificate_does_not_name_the_host(
    tls_server: TlsServer, private_tmp: Path
) -> None:
    status, message = check(tls_server.config("127.0.0.1", "verify-full", tls_server.ca_pem))

    assert status == Status.FAILED
    assert message is not None
    assert "127.0.0.1" in message
    assert list(private_tmp.glob("perly-ca-*")) == []


@pytest.mark.parametrize("ssl_mode", ["verify-ca", "verify-full"])
def test_verifying_modes_refuse_a_server_signed_by_another_ca(
    tls_server: TlsServer, private_tmp: Path, ssl_mode: str
) -> None:
    status, message = check(tls_server.config("localhost", ssl_mode, tls_server.other_ca_pem))

    assert status == Status.FAILED
    assert message is not None
    assert "certificate verify failed" in message
    assert list(private_tmp.glob("perly-ca-*")) == []


def test_the_ca_file_is_readable_by_its_owner_only_while_the_store_is_open(
    tls_server: TlsServer, private_tmp: Path
) -> None:
    from destination_perly.config import open_store, parse_config

    store = open_store(parse_config(tls_server.config("localhost", "verify-full", tls_server.ca_pem)).store)
    try:
        (ca_file,) = private_tmp.glob("perly-ca-*")
        assert ca_file.stat().st_mode & 0o777 == 0o600
        assert ca_file.read_text() == tls_server.ca_pem
    finally:
        store.close()
    assert not ca_file.exists()

"""TLS to the database as libpq's sslmode says, against real servers: the main one (without TLS) and a
throwaway cluster with ``ssl=on`` and a certificate made here by a CA of our own, for the host name
``localhost`` only (so 127.0.0.1 fails a host name check, while the chain still verifies).

Whether a connection is encrypted is the server's word: ``pg_stat_ssl`` for its own backend.

What the change saves is shown by the context ``prefer`` hands to pg8000 (it holds no CA certificate),
not by a fresh process that never imports ssl: pg8000 imports scramp, which imports ssl at once."""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from etl_core.config import db_settings
from etl_core.errors import ConfigError
from etl_core.store import db as dbmod
from tests.conftest import _Throwaway, throwaway_server

SERVER_EXTENSIONS = """\
subjectAltName = DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:  # a skip would read as a pass outside CI: fail instead
        raise RuntimeError("the TLS tests need the openssl tool (apt-get install openssl: .ci/setup-system.sh)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA; its key stays next to it as ``name.key``."""
    openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=experiment-etl {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)
    return directory / f"{name}.pem"


def make_server_certificate(directory: Path, ca: Path) -> tuple[Path, Path]:
    """A server certificate signed by ``ca`` whose only name is DNS:localhost (its CN is no host name)."""
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=experiment-etl test server", cwd=directory)
    openssl("x509", "-req", "-in", "server.csr", "-CA", str(ca), "-CAkey", str(ca.with_suffix(".key")),
            "-set_serial", "2", "-days", "2", "-extfile", "server.ext", "-out", "server.pem", cwd=directory)
    return directory / "server.pem", directory / "server.key"


@dataclasses.dataclass(frozen=True)
class TlsServer:
    port: int
    socket_dir: Path
    ca: Path  # signed the server's certificate
    other_ca: Path  # signed nothing the server has

    def settings(self, host: str = "127.0.0.1", **query: str) -> Any:
        params = "&".join(f"{name}={value}" for name, value in query.items())
        return db_settings({"DATABASE_URL": f"postgresql://postgres@{host}:{self.port}/postgres?{params}",
                            "DB_CONNECT_ATTEMPTS": "3"})


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """One throwaway cluster with ssl=on for the module (initdb and start take a second or two)."""
    server = _Throwaway()
    try:
        certs = server.dir / "tls"  # inside the cluster's directory, which the server's user may read
        certs.mkdir()
        ca = make_ca(certs, "ca")
        cert, key = make_server_certificate(certs, ca)
        key.chmod(0o600)  # the server refuses a private key others may read
        if server.prefix:  # we are root and the server runs as postgres: its key must be its own
            for path in (certs, cert, key):
                shutil.chown(path, "postgres")
        other_ca = make_ca(tmp_path_factory.mktemp("other-ca"), "other-ca")
        try:
            server.start("ssl=on", f"ssl_cert_file={cert}", f"ssl_key_file={key}")
        except subprocess.CalledProcessError:
            log = server.dir / "log"
            raise RuntimeError(f"the TLS server did not start: {log.read_text() if log.exists() else ''}") from None
        yield TlsServer(port=server.port, socket_dir=server.dir, ca=ca, other_ca=other_ca)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def plain_url(database_url: str) -> Iterator[str]:
    """A server without TLS: the main one (ssl=off on the project's machines), else a throwaway one."""
    conn = dbmod.connect(db_settings({"DATABASE_URL": database_url, "PGSSLMODE": "disable"}))
    try:
        [[ssl_setting]] = conn.run("SHOW ssl")
    finally:
        dbmod.close_quietly(conn)
    if ssl_setting == "off":
        yield database_url
        return
    with throwaway_server() as url:
        yield url


def encrypted(settings: Any, sleeps: list[float] | None = None) -> bool:
    """Connect as ``settings`` say and ask the server whether this connection is TLS."""
    conn = dbmod.connect(settings, sleep=(sleeps.append if sleeps is not None else lambda seconds: None))
    try:
        [[in_use]] = conn.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return bool(in_use)
    finally:
        dbmod.close_quietly(conn)


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ``ssl_context`` of each connection pg8000 is asked for (the real connection is made)."""
    import pg8000.native

    asked: list[Any] = []
    real = pg8000.native.Connection

    def recording(**kwargs: Any) -> Any:
        asked.append(kwargs["ssl_context"])
        return real(**kwargs)

    monkeypatch.setattr(pg8000.native, "Connection", recording)
    return asked


def with_mode(url: str, mode: str) -> Any:
    return db_settings({"DATABASE_URL": url, "PGSSLMODE": mode, "DB_CONNECT_ATTEMPTS": "3"})


# --- a server without TLS -------------------------------------------------------------------------

def test_prefer_asks_for_tls_then_talks_plain_text_without_loading_a_ca_store(plain_url: str,
                                                                             contexts: list[Any]) -> None:
    assert not encrypted(with_mode(plain_url, "prefer"))
    assert [type(asked) for asked in contexts] == [ssl.SSLContext, bool] and contexts[1] is False
    context = contexts[0]
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)
    # pg8000's own default loads the system's CA store on every connect; ours loads none
    assert context.cert_store_stats() == {"x509": 0, "crl": 0, "x509_ca": 0}


def test_disable_asks_for_no_tls(plain_url: str, contexts: list[Any]) -> None:
    assert not encrypted(with_mode(plain_url, "disable"))
    assert contexts == [False]


def test_require_against_a_server_without_tls_is_bad_config_at_once(plain_url: str) -> None:
    sleeps: list[float] = []
    with pytest.raises(ConfigError, match=r"does not accept TLS, but sslmode=require") as info:
        encrypted(with_mode(plain_url, "require"), sleeps)
    assert info.value.code == "bad_config"
    assert sleeps == []  # three attempts allowed, one made: the same server would refuse again


# --- a server with TLS ----------------------------------------------------------------------------

def test_prefer_uses_tls_when_the_server_has_it(tls_server: TlsServer, contexts: list[Any]) -> None:
    assert encrypted(tls_server.settings(sslmode="prefer"))
    assert len(contexts) == 1


def test_disable_stays_plain_text_on_a_server_with_tls(tls_server: TlsServer) -> None:
    assert not encrypted(tls_server.settings(sslmode="disable"))


def test_require_encrypts_without_checking_who_signed_the_certificate(tls_server: TlsServer) -> None:
    assert encrypted(tls_server.settings(sslmode="require"))


def test_verify_full_with_the_ca_and_the_certificates_host_name(tls_server: TlsServer) -> None:
    assert encrypted(tls_server.settings("localhost", sslmode="verify-full", sslrootcert=str(tls_server.ca)))


def test_verify_full_refuses_a_host_name_the_certificate_does_not_name(tls_server: TlsServer) -> None:
    sleeps: list[float] = []
    settings = tls_server.settings("127.0.0.1", sslmode="verify-full", sslrootcert=str(tls_server.ca))
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1:\d+/postgres failed TLS verification "
                                          r"\(sslmode=verify-full\): IP address mismatch, certificate is not "
                                          r"valid for '127\.0\.0\.1'.*must name the host") as info:
        encrypted(settings, sleeps)
    assert info.value.code == "bad_config" and sleeps == []  # not retried: the certificate stays the same


def test_verify_ca_refuses_a_certificate_from_another_ca(tls_server: TlsServer) -> None:
    sleeps: list[float] = []
    settings = tls_server.settings("localhost", sslmode="verify-ca", sslrootcert=str(tls_server.other_ca))
    with pytest.raises(ConfigError, match=r"failed TLS verification \(sslmode=verify-ca\): unable to get local issuer"):
        encrypted(settings, sleeps)
    assert sleeps == []


def test_verify_ca_accepts_the_right_ca_at_any_host_name(tls_server: TlsServer) -> None:
    assert encrypted(tls_server.settings("127.0.0.1", sslmode="verify-ca", sslrootcert=str(tls_server.ca)))


def test_verify_full_without_sslrootcert_trusts_only_the_system_store(tls_server: TlsServer) -> None:
    with pytest.raises(ConfigError, match=r"failed TLS verification \(sslmode=verify-full\)"):
        encrypted(tls_server.settings("localhost", sslmode="verify-full"))


def test_require_with_a_ca_file_verifies_the_chain_as_libpq_does(tls_server: TlsServer) -> None:
    assert encrypted(tls_server.settings("127.0.0.1", sslmode="require", sslrootcert=str(tls_server.ca)))
    with pytest.raises(ConfigError, match=r"failed TLS verification \(sslmode=require\)"):
        encrypted(tls_server.settings("127.0.0.1", sslmode="require", sslrootcert=str(tls_server.other_ca)))


def test_a_ca_file_that_holds_no_certificate_is_bad_config_naming_it(tls_server: TlsServer, tmp_path: Path) -> None:
    junk = tmp_path / "not-a-ca.pem"
    junk.write_text("this is no certificate\n")
    with pytest.raises(ConfigError, match=f"sslrootcert {junk} holds no CA certificate"):
        encrypted(tls_server.settings("localhost", sslmode="verify-full", sslrootcert=str(junk)))


def test_a_unix_socket_asks_for_no_tls_whatever_sslmode_says(tls_server: TlsServer, contexts: list[Any]) -> None:
    """libpq ignores sslmode for Unix-domain sockets; so do we (the server would not offer TLS there)."""
    settings = db_settings({"DATABASE_URL": f"postgresql://postgres@/postgres?host={tls_server.socket_dir}"
                                            f"&port={tls_server.port}&sslmode=verify-full"
                                            f"&sslrootcert={tls_server.ca}"})
    assert settings.unix_sock is not None
    assert not encrypted(settings)
    assert contexts == [False]


"""TLS and mutual TLS on the ranking port, and the matching credentials for clients.

The server reads its certificate, key and (for mutual TLS) client CA once, when it starts, and checks
them there with the standard library's `ssl` (the key matches the certificate, the CA bundle parses),
so a wrong path or a mismatched pair fails `adrank serve` with a message naming the flag, instead of
failing every handshake later with an opaque error. Rotating certificates means restarting (the
Kubernetes rollout does that). Whether plaintext is allowed at all is ServerConfig's rule: loopback only,
unless `--insecure` says otherwise.

Usage::

    port = bind_port(server, config)                      # add_secure_port or add_insecure_port
    tls = ClientTls(ca="ca.pem", cert="client.pem", key="client.key")
    with open_channel("10.0.0.5:50051", tls) as channel: ...
"""

from __future__ import annotations

import logging
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving.config import ServerConfig

log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the flag it came from."""


def _flag(field: str) -> str:
    return f"--{field.replace('_', '-')} ({ServerConfig.env_var(field)})"


def read_pem(field: str, path: str, *, flag: str | None = None) -> bytes:
    """The bytes of PEM file `path`, or a TlsFileError naming `flag` (default: the server flag of `field`)."""
    where = flag or _flag(field)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsFileError(f"{where}: {path} is not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class ServerTls:
    """The PEM bytes the ranking port serves with; `client_ca` set means client certificates are required."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_config(cls, config: ServerConfig) -> ServerTls | None:
        """Reads and checks the files named by `config` (None when TLS is off)."""
        if not config.tls_cert:
            return None
        cert = read_pem("tls_cert", config.tls_cert)
        key = read_pem("tls_key", config.tls_key)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
        except ssl.SSLError as exc:
            raise TlsFileError(f"{_flag('tls_key')}: {config.tls_key} is not the private key of the certificate in "
                               f"{_flag('tls_cert')} {config.tls_cert} ({exc.reason or exc})") from None
        ca = None
        if config.tls_client_ca:
            ca = read_pem("tls_client_ca", config.tls_client_ca)
            try:
                ssl.create_default_context(cafile=config.tls_client_ca)
            except ssl.SSLError as exc:
                raise TlsFileError(f"{_flag('tls_client_ca')}: {config.tls_client_ca} holds no usable CA "
                                   f"certificate ({exc.reason or exc})") from None
        _warn_if_readable_by_others(config.tls_key)
        return cls(cert, key, ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.cert_chain)], root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def _warn_if_readable_by_others(path: str) -> None:
    mode = Path(path).stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s: the TLS private key is readable by group or others (mode %o); chmod 600 it",
                    path, stat.S_IMODE(mode))


def bind_port(server: grpc.aio.Server, config: ServerConfig) -> int:
    """Binds `config.host:config.port` with TLS when configured (mutual when tls_client_ca is), plaintext
    otherwise (ServerConfig has already refused plaintext on a non-loopback host without --insecure).
    Returns the bound port; OSError when nothing could be bound."""
    address = f"{config.host}:{config.port}"
    tls = ServerTls.from_config(config)
    if tls is None:
        port = server.add_insecure_port(address)
        mode = "plaintext" + (" (--insecure)" if config.insecure else "")
    else:
        port = server.add_secure_port(address, tls.credentials())
        mode = "mutual TLS" if tls.client_ca else "TLS"
    if port == 0:
        raise OSError(f"cannot bind {address}")
    log.info("ranking port %s:%d speaks %s", config.host, port, mode)
    return port


@dataclass(frozen=True, kw_only=True)
class ClientTls:
    """What a client needs to reach a TLS port: the CA that signed the server's certificate (None: the
    system's roots) and, for mutual TLS, its own certificate and key. `server_name` overrides the name the
    server's certificate is checked against (for a target given as an IP that the certificate lacks)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise TlsFileError("--tls-cert and --tls-key go together (a client certificate and its key)")

    def credentials(self) -> grpc.ChannelCredentials:
        ca = read_pem("", self.ca, flag="--tls-ca") if self.ca else None
        cert = read_pem("", self.cert, flag="--tls-cert") if self.cert else None
        key = read_pem("", self.key, flag="--tls-key") if self.key else None
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def open_channel(target: str, tls: ClientTls | None = None,
                 options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A blocking channel to `target`: TLS when `tls` is given, plaintext otherwise."""
    opts = list(options or [])
    if tls is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, tls.credentials(), options=opts + tls.options())

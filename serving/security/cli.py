"""`adrank auth new-token|hash-token`, and the TLS/token flags every client verb shares.

Tokens are read from stdin or a file, never from argv, so they stay out of shell history and `ps`.

Usage::

    adrank auth new-token --scopes score --name ranker-eu >> tokens   # prints the token once, on stderr
    printf %s "$TOKEN" | adrank auth hash-token                       # the digest a token file holds
    adrank score --target host:50051 --tls-ca ca.pem --token-file ~/.adrank-token --user 7
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from serving.security.auth import SCOPES, TokenFileError, hash_token
from serving.security.tls import ClientTls

TOKEN_ENV = "ADRANK_TOKEN"


def client_security_flags(sp: argparse.ArgumentParser) -> None:
    """--tls-ca/--tls-cert/--tls-key and --token-file for a verb that calls the ranking port."""
    g = sp.add_argument_group("TLS and auth (docs/security.md)")
    g.add_argument("--tls-ca", metavar="PATH", help="PEM CA that signed the server's certificate: connect with TLS")
    g.add_argument("--tls-cert", metavar="PATH", help="PEM client certificate, for a server requiring mutual TLS")
    g.add_argument("--tls-key", metavar="PATH", help="PEM private key of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME", help="name the server's certificate is checked against, "
                   "when it differs from the --target host")
    g.add_argument("--token-file", metavar="PATH", help=f"file holding the bearer token (else ${TOKEN_ENV}, if set)")


def client_security(a: argparse.Namespace) -> tuple[ClientTls | None, str | None]:
    """The ClientTls (None: plaintext) and the token the flags and environment give."""
    tls = None
    if a.tls_ca or a.tls_cert or a.tls_key:
        tls = ClientTls(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key, server_name=a.tls_server_name)
    if a.token_file:
        try:
            token = Path(a.token_file).read_text().strip()
        except OSError as exc:
            raise TokenFileError(f"--token-file: cannot read {a.token_file}: {exc.strerror}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    return tls, token or None


def _cmd_new_token(a: argparse.Namespace) -> int:
    scopes = [s for s in a.scopes.split(",") if s]
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        print(f"error: --scopes: must be among {', '.join(SCOPES)}; got {unknown or 'none'}", file=sys.stderr)
        return 2
    if not a.name or any(c.isspace() for c in a.name):
        print("error: --name: one word, no spaces (it names the token in logs)", file=sys.stderr)
        return 2
    token = secrets.token_urlsafe(32)
    # The line (no secret) on stdout so `>> tokens` appends it; the token itself on stderr, shown once.
    print(f"token for {a.name} (store it now, it is not kept anywhere): {token}", file=sys.stderr)
    print(f"{hash_token(token)} {','.join(scopes)} {a.name}")
    return 0


def _cmd_hash_token(a: argparse.Namespace) -> int:
    token = sys.stdin.read().strip()
    if not token:
        print("error: no token on stdin (printf %s \"$TOKEN\" | adrank auth hash-token)", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def add_auth_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("auth", help="make tokens and token-file lines for `adrank serve --auth-tokens`")
    verbs = sp.add_subparsers(dest="auth_verb", required=True)
    new = verbs.add_parser("new-token", help="a random token (stderr) and its token-file line (stdout)")
    new.add_argument("--scopes", default="score", help=f"comma-separated, among {', '.join(SCOPES)}")
    new.add_argument("--name", required=True, help="who holds it, as logs name it")
    new.set_defaults(func=_cmd_new_token)
    hashed = verbs.add_parser("hash-token", help="sha256 hex of the token read from stdin")
    hashed.set_defaults(func=_cmd_hash_token)

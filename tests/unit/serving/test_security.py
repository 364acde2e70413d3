"""Units of serving.security and serving.finite: the plaintext rule, token files, scopes, throttled logs,
the non-finite guard. The same pieces over real channels: tests/integration/test_tls_auth.py and
test_hostile_requests.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from serving.config import ConfigError, ServerConfig, is_loopback
from serving.finite import NonFiniteScore, ensure_finite
from serving.security.auth import TokenFileError, TokenTable, bearer_token, hash_token, required_scope
from serving.security.cli import add_auth_parser
from serving.security.throttled_log import ThrottledLog


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("10.0.0.5", False), ("ranker.internal", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plaintext_only_on_loopback_unless_insecure() -> None:
    with pytest.raises(ConfigError, match=r"^host: 0.0.0.0 is not a loopback address .*--insecure"):
        ServerConfig(host="0.0.0.0")
    assert ServerConfig(host="0.0.0.0", insecure=True).insecure
    assert ServerConfig(host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem").tls_cert == "c.pem"


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(tls_cert="c.pem"), "^tls_key: --tls-cert and --tls-key go together"),
    (dict(tls_key="k.pem"), "^tls_cert: --tls-cert and --tls-key go together"),
    (dict(tls_client_ca="ca.pem"), "^tls_client_ca: mutual TLS needs --tls-cert and --tls-key"),
    (dict(max_bid=-1.0), "^max_bid: must be within"),
])
def test_tls_settings_go_together(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**kwargs)


def _tokens(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens"
    path.write_text(text)
    return path


def test_token_file_parses_digests_scopes_and_names(tmp_path: Path) -> None:
    table = TokenTable.load(_tokens(tmp_path, f"# comment\n\n{hash_token('a')} score ranker eu  # trailing\n"
                                              f"{hash_token('b')} score,admin ops\n"))
    assert table.match("a").name == "ranker eu" and table.match("a").scopes == {"score"}
    assert table.match("b").scopes == {"score", "admin"}
    assert table.match("c") is None and table.match("") is None


@pytest.mark.parametrize(("text", "match"), [
    ("plain-token-here score ranker\n", "line 1: the first field must be 64 lower-case hex digits"),
    (f"{hash_token('a')} score\n", "line 1: expected '<sha256-hex> <scope,scope> <name>'"),
    (f"\n{hash_token('a')} score,root x\n", r"line 2: scopes must be among score, admin; got \['root'\]"),
    (f"{hash_token('a')} score x\n{hash_token('a')} admin y\n", "line 2: the same token digest appears twice"),
    ("# nothing\n", "holds no token"),
])
def test_bad_token_files_name_the_line_not_its_content(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(TokenFileError, match=match) as info:
        TokenTable.load(_tokens(tmp_path, text))
    assert "plain-token-here" not in str(info.value) and str(info.value).startswith("--auth-tokens")


def test_every_entry_is_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the comparison count does not depend on where (or whether) the token matches."""
    import serving.security.auth as auth

    table = TokenTable.load(_tokens(tmp_path, "".join(f"{hash_token(str(i))} score t{i}\n" for i in range(5))))
    calls: list[int] = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for token in ("0", "4", "missing"):
        calls.clear()
        table.match(token)
        assert len(calls) == 5


@pytest.mark.parametrize(("method", "scope"), [
    ("/adrank.v1.AdRanking/Score", "score"), ("/grpc.health.v1.Health/Check", None),
    ("/grpc.health.v1.Health/Watch", None), ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None),
    ("/adrank.v1.Rollout/Start", "admin"), ("/anything.Else/Call", "admin"),
])
def test_required_scopes_fail_closed(method: str, scope: str | None) -> None:
    assert required_scope(method) == scope


@pytest.mark.parametrize(("metadata", "token"), [
    ([("authorization", "Bearer abc")], "abc"), ([("Authorization", "bearer  abc ")], "abc"),
    ([("authorization", b"Bearer abc")], "abc"), ([("authorization", "Basic abc")], None),
    ([("authorization", "abc")], None), ([("authorization", "Bearer " + "x" * 5000)], None), ([], None), (None, None),
])
def test_bearer_token_parsing(metadata, token) -> None:
    assert bearer_token(metadata) == token


def test_auth_cli_makes_a_token_whose_line_the_server_accepts(tmp_path: Path, capsys, monkeypatch) -> None:
    import argparse
    import io

    p = argparse.ArgumentParser()
    add_auth_parser(p.add_subparsers(dest="verb"))
    a = p.parse_args(["auth", "new-token", "--scopes", "score,admin", "--name", "ops"])
    assert a.func(a) == 0
    out, err = capsys.readouterr()
    token = err.rsplit(": ", 1)[1].strip()
    assert token not in out and len(token) >= 40
    assert TokenTable.load(_tokens(tmp_path, out)).match(token).scopes == {"score", "admin"}
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    a = p.parse_args(["auth", "hash-token"])
    assert a.func(a) == 0 and capsys.readouterr().out.strip() == hash_token(token)
    a = p.parse_args(["auth", "new-token", "--scopes", "root", "--name", "x"])
    assert a.func(a) == 2


def test_throttled_log_writes_one_line_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = ThrottledLog(logging.getLogger("throttle-test"), interval_s=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "throttle-test"):
        assert log.warning("bad", "bad input %d", 1)
        assert not any(log.warning("bad", "bad input %d", i) for i in range(999))
        assert log.warning("other", "another kind")  # kinds are throttled apart
        now[0] = 10.5
        assert log.warning("bad", "bad input %d", 2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad input 1", "another kind",
                     "bad input 2 (and 999 more like it in the last 10 s, not logged)"]


def test_non_finite_scores_are_refused_naming_the_candidate() -> None:
    p = np.array([0.5, 0.2, np.nan], np.float32)
    with pytest.raises(NonFiniteScore, match=r"model vm/1 .* candidates\[2\]") as info:
        ensure_finite(p, np.full(3, 0.5, np.float32), np.ones(3), model="vm/1")
    assert info.value.code.name == "INTERNAL"
    with pytest.raises(NonFiniteScore, match=r"candidates\[0\]"):  # finite inputs, overflowing product
        ensure_finite(np.ones(1, np.float32), np.ones(1, np.float32), np.array([np.inf]), model="vm/1")
    ensure_finite(np.ones(2, np.float32), np.zeros(2, np.float32), np.array([1e300, 0.0]), model="vm/1")

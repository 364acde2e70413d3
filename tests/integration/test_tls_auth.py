"""TLS, mutual TLS and token auth on the real server process, through real channels.

The certificates come from a CA made here (tls_fixtures, `cryptography`); a second CA signs the
impostor's certificate. Each server is `adrank serve` in a child process (ServerProcess).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_fixtures import Pem, issue, make_ca

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request, score
from serving.process import ServerProcess
from serving.security.auth import hash_token
from serving.security.tls import ClientTls, open_channel

ROOT = Path(__file__).resolve().parents[2]
SCORE_TOKEN, ADMIN_TOKEN, OTHER_TOKEN = "score-secret-0123456789", "admin-secret-9876543210", "never-issued"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Pem]:
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca(d / "ca", "adrank test CA"), make_ca(d / "other-ca", "someone else's CA")
    return {"ca": ca, "other_ca": other_ca, "server": issue(ca, d / "server", "localhost", server=True),
            "client": issue(ca, d / "client", "ranker", server=False),
            "impostor": issue(other_ca, d / "impostor", "ranker", server=False)}


@pytest.fixture(scope="module")
def request_(tiny_run: Path) -> ranking_pb2.ScoreRequest:
    catalog = load_catalog(tiny_run / "catalog.npz")
    return build_request(int(catalog["user_id"][0]), 20, catalog, seed=3, request_time_ms=int(catalog["max_ts_ms"][0]))


def _serve_args(tiny_run: Path, *extra: str) -> list[str]:
    return ["--repository", str(tiny_run / "model_repository"), *extra]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


@pytest.fixture(scope="module")
def tls_server(tiny_run: Path, pki: dict[str, Pem]):
    args = _serve_args(tiny_run, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key))
    with ServerProcess(args, tls=ClientTls(ca=str(pki["ca"].cert))) as srv:
        yield srv


@pytest.fixture(scope="module")
def mtls_server(tiny_run: Path, pki: dict[str, Pem]):
    args = _serve_args(tiny_run, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
                       "--tls-client-ca", str(pki["ca"].cert))
    client = ClientTls(ca=str(pki["ca"].cert), cert=str(pki["client"].cert), key=str(pki["client"].key))
    with ServerProcess(args, tls=client) as srv:
        yield srv


def test_tls_client_with_the_ca_is_served(tls_server, pki, request_):
    resp = score(tls_server.target, request_, tls=ClientTls(ca=str(pki["ca"].cert)))
    assert len(resp.candidates) == 20
    assert "speaks TLS" in tls_server.log_text()


def test_plaintext_client_and_client_trusting_another_ca_fail_on_tls_port(tls_server, pki, request_):
    assert _code(lambda: score(tls_server.target, request_, timeout_s=3)) == grpc.StatusCode.UNAVAILABLE
    wrong_ca = ClientTls(ca=str(pki["other_ca"].cert))
    assert _code(lambda: score(tls_server.target, request_, tls=wrong_ca, timeout_s=3)) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_or_with_another_cas(mtls_server, pki, request_):
    no_cert = ClientTls(ca=str(pki["ca"].cert))
    impostor = ClientTls(ca=str(pki["ca"].cert), cert=str(pki["impostor"].cert), key=str(pki["impostor"].key))
    for tls in (no_cert, impostor, None):
        assert _code(lambda tls=tls: score(mtls_server.target, request_, tls=tls, timeout_s=3)) == \
            grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_client_with_a_valid_certificate(mtls_server, pki, request_):
    client = ClientTls(ca=str(pki["ca"].cert), cert=str(pki["client"].cert), key=str(pki["client"].key))
    assert len(score(mtls_server.target, request_, tls=client).candidates) == 20
    assert mtls_server.health() == health_pb2.HealthCheckResponse.SERVING
    assert "speaks mutual TLS" in mtls_server.log_text()


def test_adrank_score_cli_speaks_mtls(mtls_server, pki, tiny_run):
    out = subprocess.run(
        [sys.executable, "-m", "adrank", "score", "--target", mtls_server.target, "--user", "1",
         "--candidates", "5", "--catalog", str(tiny_run / "catalog.npz"), "--json", "--tls-ca", str(pki["ca"].cert),
         "--tls-cert", str(pki["client"].cert), "--tls-key", str(pki["client"].key)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"candidates"' in out.stdout


@pytest.fixture(scope="module")
def auth_server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# digests only\n{hash_token(SCORE_TOKEN)} score ranker\n"
                      f"{hash_token(ADMIN_TOKEN)} admin operator  # no score scope\n")
    with ServerProcess(_serve_args(tiny_run, "--auth-tokens", str(tokens))) as srv:
        yield srv


def _score_with(srv: ServerProcess, request_, metadata):
    with srv.channel() as ch:
        return ranking_pb2_grpc.AdRankingStub(ch).Score(request_, timeout=5, metadata=metadata)


def test_token_with_the_score_scope_is_served(auth_server, request_):
    assert len(score(auth_server.target, request_, token=SCORE_TOKEN).candidates) == 20


@pytest.mark.parametrize("metadata", [None, [("authorization", f"Bearer {OTHER_TOKEN}")],
                                      [("authorization", SCORE_TOKEN)], [("authorization", "Bearer ")]])
def test_missing_or_invalid_token_is_unauthenticated_and_never_echoed(auth_server, request_, metadata):
    with pytest.raises(grpc.RpcError) as info:
        _score_with(auth_server, request_, metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert OTHER_TOKEN not in info.value.details() and SCORE_TOKEN not in info.value.details()


def test_token_without_the_scope_is_permission_denied(auth_server, request_):
    with pytest.raises(grpc.RpcError) as info:
        _score_with(auth_server, request_, [("authorization", f"Bearer {ADMIN_TOKEN}")])
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks scope 'score'" in info.value.details() and ADMIN_TOKEN not in info.value.details()


def test_health_and_reflection_need_no_token(auth_server):
    assert auth_server.health() == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with auth_server.channel() as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=5))
    assert "adrank.v1.AdRanking" in {s.name for s in reply.list_services_response.service}


def test_tokens_never_reach_the_log(auth_server, request_):
    for token in (OTHER_TOKEN, ADMIN_TOKEN):
        with pytest.raises(grpc.RpcError):
            _score_with(auth_server, request_, [("authorization", f"Bearer {token}")])
    log = auth_server.log_text()
    assert "refused /adrank.v1.AdRanking/Score" in log
    assert all(t not in log for t in (SCORE_TOKEN, ADMIN_TOKEN, OTHER_TOKEN))


def _serve_fails(tiny_run: Path, *args: str, env: dict[str, str] | None = None) -> str:
    import os

    out = subprocess.run([sys.executable, "-m", "adrank", "serve", "--port", "0", *_serve_args(tiny_run, *args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    return out.stderr


def test_unreadable_files_fail_start_naming_the_flag(tiny_run, pki, tmp_path):
    missing = str(tmp_path / "nope.pem")
    err = _serve_fails(tiny_run, "--tls-cert", missing, "--tls-key", str(pki["server"].key))
    assert f"--tls-cert (ADRANK_TLS_CERT): cannot read {missing}" in err
    err = _serve_fails(tiny_run, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["client"].key))
    assert "--tls-key (ADRANK_TLS_KEY)" in err and "is not the private key" in err
    err = _serve_fails(tiny_run, "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
                       "--tls-client-ca", missing)
    assert "--tls-client-ca (ADRANK_TLS_CLIENT_CA): cannot read" in err
    assert "--tls-key: --tls-cert and --tls-key go together" in _serve_fails(tiny_run, "--tls-cert", missing)
    assert "--auth-tokens (ADRANK_AUTH_TOKENS): cannot read" in _serve_fails(tiny_run, "--auth-tokens", missing)


def test_non_loopback_host_needs_tls_or_insecure(tiny_run):
    err = _serve_fails(tiny_run, "--host", "0.0.0.0")
    assert "--host: 0.0.0.0 is not a loopback address" in err and "--insecure" in err
    err = _serve_fails(tiny_run, env={"ADRANK_HOST": "0.0.0.0"})
    assert "ADRANK_HOST: 0.0.0.0 is not a loopback address" in err


def test_insecure_flag_allows_plaintext_on_all_interfaces(tiny_run, request_):
    with ServerProcess(_serve_args(tiny_run, "--host", "0.0.0.0", "--insecure")) as srv:
        assert len(score(srv.target, request_).candidates) == 20
        assert "plaintext (--insecure)" in srv.log_text()


def test_health_over_tls_channel_helper(tls_server, pki):
    with open_channel(tls_server.target, ClientTls(ca=str(pki["ca"].cert))) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING

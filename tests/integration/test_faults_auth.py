"""Fault suite, TLS and tokens: one `adrank serve` process with mutual TLS *and* token auth, a stream
of legitimate calls (valid client certificate, token with scope `score`) while hostile clients keep
trying beside it — no certificate, a certificate from another CA, plaintext, a valid certificate with
no token, a wrong token, a token without the scope. Counts each client's outcomes (`pytest -s`):
the legitimate stream must lose nothing, every hostile call must get its own refusal, health must stay
SERVING and no token may reach the log. (Each refusal alone: tests/integration/test_tls_auth.py.)"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from tls_fixtures import issue, make_ca

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess
from serving.security.auth import hash_token
from serving.security.tls import ClientTls, open_channel

SCORE_TOKEN, ADMIN_TOKEN, WRONG_TOKEN = "score-tok-5e2a1f7c", "admin-tok-91b3d04e", "wrong-tok-c0ffee12"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("fault_pki")
    ca, other = make_ca(d / "ca", "adrank fault CA"), make_ca(d / "other", "another CA")
    return {"ca": ca, "server": issue(ca, d / "server", "localhost", server=True),
            "client": issue(ca, d / "client", "ranker", server=False),
            "impostor": issue(other, d / "impostor", "ranker", server=False)}


def test_hostile_clients_beside_a_legitimate_stream_over_mtls_and_tokens(tiny_run: Path, pki: dict,
                                                                          tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(SCORE_TOKEN)} score ranker\n{hash_token(ADMIN_TOKEN)} admin operator\n")
    ca = str(pki["ca"].cert)
    good_tls = ClientTls(ca=ca, cert=str(pki["client"].cert), key=str(pki["client"].key))
    clients = {  # name -> (tls, token, expected status)
        "legitimate": (good_tls, SCORE_TOKEN, "OK"),
        "no certificate": (ClientTls(ca=ca), SCORE_TOKEN, "UNAVAILABLE"),
        "other CA's certificate": (ClientTls(ca=ca, cert=str(pki["impostor"].cert), key=str(pki["impostor"].key)),
                                   SCORE_TOKEN, "UNAVAILABLE"),
        "plaintext": (None, SCORE_TOKEN, "UNAVAILABLE"),
        "no token": (good_tls, None, "UNAUTHENTICATED"),
        "wrong token": (good_tls, WRONG_TOKEN, "UNAUTHENTICATED"),
        "token without scope": (good_tls, ADMIN_TOKEN, "PERMISSION_DENIED"),
    }
    catalog = load_catalog(tiny_run / "catalog.npz")
    request = build_request(int(catalog["user_id"][0]), 20, catalog, seed=3,
                            request_time_ms=int(catalog["max_ts_ms"][0]))
    outcomes: dict[str, Counter] = {name: Counter() for name in clients}
    stop = threading.Event()

    def run(target: str, name: str) -> None:
        tls, token, _ = clients[name]
        metadata = [("authorization", f"Bearer {token}")] if token else None
        while not stop.is_set():
            # the legitimate client keeps its channel; hostile ones reconnect (a new handshake) each time
            with open_channel(target, tls) as ch:
                stub = ranking_pb2_grpc.AdRankingStub(ch)
                for _ in range(200 if name == "legitimate" else 1):
                    try:
                        stub.Score(request, timeout=3, metadata=metadata)
                        outcomes[name]["OK"] += 1
                    except grpc.RpcError as err:
                        outcomes[name][err.code().name] += 1
                    if stop.is_set():
                        break

    args = ["--repository", str(tiny_run / "model_repository"), "--tls-cert", str(pki["server"].cert),
            "--tls-key", str(pki["server"].key), "--tls-client-ca", ca, "--auth-tokens", str(tokens)]
    with ServerProcess(args, tls=good_tls) as srv:
        threads = [threading.Thread(target=run, args=(srv.target, name), daemon=True) for name in clients]
        for t in threads:
            t.start()
        health = []
        for _ in range(10):
            time.sleep(0.3)
            health.append(srv.health())
        stop.set()
        for t in threads:
            t.join(10)
        log = srv.log_text()
    print("\nmTLS + tokens under hostile clients (3 s):\n" +
          "\n".join(f"  {name:24s} {dict(c)}" for name, c in outcomes.items()) +
          f"\n  health {Counter(health)}")
    for name, (_, _, expected) in clients.items():
        assert sum(outcomes[name].values()) > 0, name
        assert set(outcomes[name]) == {expected}, (name, outcomes[name])
    assert set(health) == {health_pb2.HealthCheckResponse.SERVING}
    assert all(t not in log for t in (SCORE_TOKEN, ADMIN_TOKEN, WRONG_TOKEN))

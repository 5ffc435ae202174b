"""The Helm chart (helm/callscribe): lint, render, and check the rendered manifests.

Helm comes from scripts/helm.sh (a pinned version built with `go install` from the Go module
proxy, cached in ~/.cache/callscribe).  No helm is an error, not a skip: the chart is part of
the product.  The manifests are rendered with `helm template` for a fixed Kubernetes version
and parsed with PyYAML; no cluster is needed.

Scenarios: the default values, values-production.yaml (KEDA, SASL_SSL with existing Secrets,
ingress, model volume, ServiceMonitor, NetworkPolicy), and --set variations for the CPU
HorizontalPodAutoscaler, inline credentials, and the values the chart must refuse.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from callscribe.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "callscribe"
PRODUCTION = CHART / "values-production.yaml"
KUBE_VERSION = "1.30.0"
RELEASE = "cs"
SECRET_SETTINGS = {"CALLSCRIBE_API_KEYS", "CALLSCRIBE_KAFKA_SASL_USERNAME",
                   "CALLSCRIBE_KAFKA_SASL_PASSWORD", "CALLSCRIBE_KAFKA_SSL_KEY_PASSWORD"}
KNOWN_SETTINGS = {f"CALLSCRIBE_{name.upper()}" for name in Settings.model_fields}

HPA_SET = ["worker.enabled=true", "kafka.bootstrapServers=kafka.kafka:9092"]
INLINE_SET = HPA_SET + ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.username=scribe",
                        "kafka.sasl.password=s3cret", "kafka.tls.ca=-----BEGIN CERTIFICATE-----",
                        "worker.autoscaling.keda.enabled=true",
                        "worker.autoscaling.keda.serverAddress=http://prometheus:9090",
                        "apiKeys.keys[0]=key-0123456789abcdef"]
GATEWAY_KAFKA_SET = ["gateway.kafka.enabled=true", "kafka.bootstrapServers=kafka.kafka:9093",
                     "kafka.securityProtocol=SASL_SSL", "kafka.sasl.existingSecret=kafka-user",
                     "kafka.tls.caSecret=kafka-ca", "networkPolicy.enabled=true"]


# --- helm --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> str:
    started = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True,
                          text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/helm.sh could not install helm:\n{proc.stderr[-4000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    print(f"\nhelm: {path} ({time.monotonic() - started:.1f} s to install or find)")
    return path


def _run(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def _template(helm: str, values: tuple[str, ...], sets: tuple[str, ...]) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", "callscribe",
            "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    proc = _run(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render(helm: str, *, values: tuple[str, ...] = (), sets: list[str] | tuple = ()) -> list[dict]:
    return _template(helm, tuple(values), tuple(sets))


def render_fails(helm: str, sets: list[str], values: tuple[str, ...] = ()) -> str:
    args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    proc = _run(helm, *args)
    assert proc.returncode != 0, f"helm template accepted {sets}"
    return proc.stderr


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [d for d in kinds(docs, kind)
             if component is None
             or d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"{len(found)} {kind} for {component}"
    return found[0]


def deployment(docs: list[dict], component: str) -> dict:
    return one(docs, "Deployment", component)


def container(dep: dict) -> dict:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def configmap(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


@pytest.fixture(scope="session")
def default(helm: str) -> list[dict]:
    return render(helm)


@pytest.fixture(scope="session")
def production(helm: str) -> list[dict]:
    return render(helm, values=(str(PRODUCTION),))


@pytest.fixture(scope="session")
def hpa(helm: str) -> list[dict]:
    return render(helm, sets=HPA_SET)


@pytest.fixture(scope="session")
def inline(helm: str) -> list[dict]:
    return render(helm, sets=INLINE_SET)


@pytest.fixture(scope="session")
def gateway_kafka(helm: str) -> list[dict]:
    return render(helm, sets=GATEWAY_KAFKA_SET)


@pytest.fixture(scope="session", params=["default", "production", "hpa", "inline", "gateway_kafka"])
def scenario(request) -> list[dict]:
    return request.getfixturevalue(request.param)


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


def default_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


# --- lint --------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, PRODUCTION], ids=["default", "production"])
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = _run(helm, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_yaml_parser_version() -> None:
    print(f"\nPyYAML {yaml.__version__}")
    assert tuple(int(x) for x in yaml.__version__.split(".")[:2]) >= (6, 0)


def test_chart_and_image_versions_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(),
                        re.MULTILINE).group(1)
    assert chart["apiVersion"] == "v2" and chart["appVersion"] == version
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{version}"' in dockerfile


# --- every scenario ----------------------------------------------------------------------------

REQUIRED_LABELS = ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                   "app.kubernetes.io/part-of")


def test_every_object_has_the_standard_labels(scenario: list[dict]) -> None:
    for doc in scenario:
        labels = doc["metadata"]["labels"]
        for key in REQUIRED_LABELS:
            assert key in labels, f"{doc['kind']} {doc['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert doc["metadata"]["name"].startswith(f"{RELEASE}-callscribe")
        assert len(doc["metadata"]["name"]) <= 63


def test_every_container_is_locked_down(scenario: list[dict]) -> None:
    for dep in kinds(scenario, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001     # the Dockerfile's USER
        assert pod["automountServiceAccountToken"] is False
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            # a read-only root needs writable volumes where the image writes
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert {"/tmp", "/var/lib/callscribe"} <= set(mounts)
            volumes = {v["name"] for v in pod["volumes"]}
            assert {m["name"] for m in c["volumeMounts"]} <= volumes
            for key in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][key]), f"{c['name']} {key}"
            assert _cpu(c["resources"]["requests"]["cpu"]) <= _cpu(c["resources"]["limits"]["cpu"])
            assert _bytes(c["resources"]["requests"]["memory"]) <= _bytes(
                c["resources"]["limits"]["memory"])


def _cpu(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _bytes(q) -> int:
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    mult = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, None: 1}[m.group(2)]
    return int(float(m.group(1)) * mult)


def test_settings_are_real_callscribe_settings_and_valid(scenario: list[dict], monkeypatch) -> None:
    """ConfigMap keys and container env names are CALLSCRIBE_* settings that exist in
    Settings, the values load (the process would not stop with a configuration error), and
    no secret is in the ConfigMap."""
    data = configmap(scenario)
    for key in data:
        assert key in KNOWN_SETTINGS, f"ConfigMap key {key} is not a setting"
        assert key not in SECRET_SETTINGS
        assert isinstance(data[key], str)
    env: dict[str, str] = dict(data)
    for dep in kinds(scenario, "Deployment"):
        for e in container(dep).get("env", []):
            name = e["name"]
            assert name.startswith("CALLSCRIBE_"), name
            assert name in KNOWN_SETTINGS, f"env {name} is not a setting"
            if name in SECRET_SETTINGS:
                assert "valueFrom" in e and "secretKeyRef" in e["valueFrom"], name
            elif "value" in e:
                env[name] = e["value"]
    for key in [k for k in os.environ if k.startswith("CALLSCRIBE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key == "CALLSCRIBE_MODEL_DIR":      # a volume path: exists only in the pod
            continue
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.log_format == "json"
    assert settings.kafka_audio_partitions == int(data["CALLSCRIBE_KAFKA_AUDIO_PARTITIONS"])


def test_gateway_probes_drain_and_service(scenario: list[dict]) -> None:
    dep = deployment(scenario, "gateway")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    port = next(p for p in c["ports"] if p["name"] == "http")["containerPort"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    args = c["args"]
    assert args[0] == "serve" and args[args.index("--port") + 1] == str(port)
    assert args[args.index("--host") + 1] == "0.0.0.0"
    drain = float(args[args.index("--drain-seconds") + 1])
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep" and sleep > 0
    grace = pod["terminationGracePeriodSeconds"]
    # preStop + drain + the server's 15 s flush must fit before SIGKILL
    assert grace > drain and grace >= sleep + drain + 15, (grace, sleep, drain)
    # the gateway refuses to listen on 0.0.0.0 without API keys: they come from a Secret
    keys = env_of(c)["CALLSCRIBE_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert keys["name"] and keys["key"]
    # rolling update keeps capacity while old pods drain
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    svc = one(scenario, "Service", "gateway")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(scenario, "PodDisruptionBudget", "gateway")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_config_checksum_annotation_rolls_pods(helm: str) -> None:
    def checksum(sets: list[str]) -> str:
        dep = deployment(render(helm, sets=sets), "gateway")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum([])
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert checksum(["config.CALLSCRIBE_LOG_LEVEL=debug"]) != base
    assert checksum(["gateway.replicas=5"]) == base
    for dep in kinds(render(helm, sets=HPA_SET), "Deployment"):
        assert "checksum/config" in dep["spec"]["template"]["metadata"]["annotations"]


# --- default values ----------------------------------------------------------------------------

def test_default_is_the_gateway_alone(default: list[dict]) -> None:
    present = {d["kind"] for d in default}
    assert present == {"ServiceAccount", "Secret", "ConfigMap", "Service", "Deployment",
                       "PodDisruptionBudget"}
    assert [d["metadata"]["labels"]["app.kubernetes.io/component"]
            for d in kinds(default, "Deployment")] == ["gateway"]
    # no API keys given: one is generated into the chart's Secret
    secret = one(default, "Secret")
    assert secret["data"]["api-keys"] and secret["metadata"]["annotations"]["callscribe.io/generated"] == "true"
    dep = deployment(default, "gateway")
    assert dep["spec"]["replicas"] == 2
    res = container(dep)["resources"]
    assert res == {"requests": {"cpu": "1", "memory": "1Gi"},
                   "limits": {"cpu": "2", "memory": "2Gi"}}
    # the CPU limit matches the decode parallelism the ConfigMap sets (see values.yaml)
    data = configmap(default)
    assert int(data["CALLSCRIBE_DECODE_WORKERS"]) * int(data["CALLSCRIBE_CPU_THREADS"]) == 2
    # and MAX_SESSIONS is at most the measured capacity of 2 cores within the latency bounds
    # (10, `callscribe bench capacity`), well under what they decode (2 / 0.12 CPU-s per s)
    assert int(data["CALLSCRIBE_MAX_SESSIONS"]) <= min(10, 2 / 0.12)


def test_default_ports_match_the_image() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    values = default_values()
    assert re.search(rf"^EXPOSE {values['gateway']['port']}$", dockerfile, re.MULTILINE)
    assert f"CALLSCRIBE_METRICS_PORT={values['worker']['metricsPort']}" in dockerfile
    assert re.search(r"--uid 10001\b", dockerfile) and "USER 10001" in dockerfile


def test_worker_only_release(helm: str) -> None:
    docs = render(helm, sets=["gateway.enabled=false"] + HPA_SET)
    assert {d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs
            if d["kind"] != "ConfigMap" and d["kind"] != "ServiceAccount"} == {"worker"}
    assert not kinds(docs, "Secret"), "no gateway: no API key Secret"


# --- worker: HPA or KEDA -----------------------------------------------------------------------

def test_worker_with_cpu_hpa_bounded_by_partitions(hpa: list[dict]) -> None:
    assert not kinds(hpa, "ScaledObject")
    dep = deployment(hpa, "worker")
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    c = container(dep)
    assert c["args"] == ["worker"]
    h = one(hpa, "HorizontalPodAutoscaler", "worker")
    assert h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                           "name": dep["metadata"]["name"]}
    partitions = int(configmap(hpa)["CALLSCRIBE_KAFKA_AUDIO_PARTITIONS"])
    assert h["spec"]["maxReplicas"] == partitions == 12
    # the default figure: the workers' backlog (grows only when they fall behind), a Pods
    # metric the worker exports under that very name
    (metric,) = h["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "callscribe_worker_backlog_audio_seconds"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "30"}
    assert h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # faust's data dir is on the writable data volume; topics are created by an init container
    assert env_of(c)["CALLSCRIBE_KAFKA_WORKER_DATA_DIR"]["value"] == "/var/lib/callscribe/worker"
    assert any(m["mountPath"] == "/var/lib/callscribe" for m in c["volumeMounts"])
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["args"] == ["topics", "create"] and init["image"] == c["image"]
    assert init["securityContext"] == c["securityContext"]
    # worker probes and metrics port
    metrics_port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
    assert env_of(c)["CALLSCRIBE_METRICS_PORT"]["value"] == str(metrics_port)
    assert c["livenessProbe"]["tcpSocket"]["port"] == "metrics"
    svc = one(hpa, "Service", "worker")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["port"] == metrics_port
    assert one(hpa, "PodDisruptionBudget", "worker")["spec"]["maxUnavailable"] == 1
    # PLAINTEXT: no Kafka credentials, no Kafka Secret
    assert "CALLSCRIBE_KAFKA_SASL_PASSWORD" not in env_of(c)
    assert configmap(hpa)["CALLSCRIBE_KAFKA_BOOTSTRAP"] == "kafka.kafka:9092"


def test_worker_hpa_on_cpu_and_topics_made_elsewhere(helm: str) -> None:
    docs = render(helm, sets=HPA_SET + ["worker.autoscaling.metric=cpu",
                                        "kafka.topics.create=false"])
    (metric,) = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 70
    assert "initContainers" not in deployment(docs, "worker")["spec"]["template"]["spec"]


def test_max_replicas_follows_the_partition_count(helm: str) -> None:
    docs = render(helm, sets=HPA_SET + ["kafka.topics.audio.partitions=7"])
    assert one(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 7
    docs = render(helm, sets=HPA_SET + ["kafka.topics.audio.partitions=7",
                                        "worker.autoscaling.keda.enabled=true",
                                        "worker.autoscaling.keda.serverAddress=http://p:9090"])
    assert one(docs, "ScaledObject")["spec"]["maxReplicaCount"] == 7


def test_worker_with_keda_on_the_backlog(production: list[dict]) -> None:
    values = production_values()
    assert not kinds(production, "HorizontalPodAutoscaler"), "KEDA makes its own HPA"
    so = one(production, "ScaledObject", "worker")
    dep = deployment(production, "worker")
    assert "replicas" not in dep["spec"]
    assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    partitions = values["kafka"]["topics"]["audio"]["partitions"]
    assert so["spec"]["maxReplicaCount"] == partitions == 24
    assert so["spec"]["minReplicaCount"] == values["worker"]["autoscaling"]["minReplicas"]
    (trigger,) = so["spec"]["triggers"]
    meta = trigger["metadata"]
    keda = values["worker"]["autoscaling"]["keda"]
    # not the group's committed lag (held back by open sentences): the workers' backlog,
    # summed over the release's worker Service, per replica
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert meta["serverAddress"] == keda["serverAddress"]
    svc = one(production, "Service", "worker")["metadata"]["name"]
    assert meta["query"] == ('sum(callscribe_worker_backlog_audio_seconds{namespace="callscribe",'
                             f'service="{svc}"}})')
    assert int(meta["threshold"]) == keda["backlogThreshold"] == 30
    assert int(meta["activationThreshold"]) == keda["activationBacklogThreshold"]
    assert not kinds(production, "TriggerAuthentication")


def test_keda_needs_a_prometheus(helm: str) -> None:
    msg = render_fails(helm, HPA_SET + ["worker.autoscaling.keda.enabled=true"])
    assert "worker.autoscaling.keda.serverAddress" in msg


# --- secrets -----------------------------------------------------------------------------------

def test_existing_secrets_are_referenced_not_rendered(production: list[dict]) -> None:
    assert not kinds(production, "Secret"), "existingSecret given: the chart renders no Secret"
    gw = env_of(container(deployment(production, "gateway")))
    assert gw["CALLSCRIBE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "callscribe-api-keys", "key": "api-keys"}
    worker = container(deployment(production, "worker"))
    env = env_of(worker)
    assert env["CALLSCRIBE_KAFKA_SASL_USERNAME"]["valueFrom"]["secretKeyRef"] == {
        "name": "callscribe-kafka-user", "key": "username"}
    assert env["CALLSCRIBE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "callscribe-kafka-user", "key": "password"}
    # the CA: a Secret volume, mounted read-only, and the setting points at the file
    pod = deployment(production, "worker")["spec"]["template"]["spec"]
    ca_volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")
    assert ca_volume["secret"]["secretName"] == "kafka-cluster-ca"
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "kafka-ca")
    assert mount["readOnly"] is True
    assert env["CALLSCRIBE_KAFKA_SSL_CAFILE"]["value"] == f"{mount['mountPath']}/ca.crt"
    data = configmap(production)
    assert data["CALLSCRIBE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["CALLSCRIBE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    # the gateway does not get the Kafka credentials
    assert "CALLSCRIBE_KAFKA_SASL_PASSWORD" not in gw


def test_inline_credentials_are_rendered_into_secrets(inline: list[dict]) -> None:
    import base64

    secrets = {s["metadata"]["name"]: s for s in kinds(inline, "Secret")}
    assert set(secrets) == {f"{RELEASE}-callscribe-api-keys", f"{RELEASE}-callscribe-kafka-sasl",
                            f"{RELEASE}-callscribe-kafka-ca"}
    decode = lambda s, k: base64.b64decode(s["data"][k]).decode()
    assert decode(secrets[f"{RELEASE}-callscribe-api-keys"], "api-keys") == "key-0123456789abcdef"
    sasl = secrets[f"{RELEASE}-callscribe-kafka-sasl"]
    assert (decode(sasl, "username"), decode(sasl, "password")) == ("scribe", "s3cret")
    assert "s3cret" not in yaml.safe_dump(one(inline, "ConfigMap"))
    env = env_of(container(deployment(inline, "worker")))
    assert env["CALLSCRIBE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
        f"{RELEASE}-callscribe-kafka-sasl"
    # KEDA asks Prometheus, not the brokers: no Kafka credentials for it; the topics init
    # container gets them like the worker
    assert "authenticationRef" not in one(inline, "ScaledObject")["spec"]["triggers"][0]
    init = deployment(inline, "worker")["spec"]["template"]["spec"]["initContainers"][0]
    assert env_of(init)["CALLSCRIBE_KAFKA_SASL_PASSWORD"] == env["CALLSCRIBE_KAFKA_SASL_PASSWORD"]


def test_gateway_in_kafka_mode_gets_the_kafka_credentials(gateway_kafka: list[dict],
                                                          default: list[dict]) -> None:
    c = container(deployment(gateway_kafka, "gateway"))
    assert c["args"][-1] == "--kafka"
    env = env_of(c)
    assert env["CALLSCRIBE_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kafka-user"
    assert env["CALLSCRIBE_KAFKA_SSL_CAFILE"]["value"] == "/etc/callscribe/kafka-ca/ca.crt"
    assert "kafka-ca" in {m["name"] for m in c["volumeMounts"]}
    np = one(gateway_kafka, "NetworkPolicy", "gateway")
    assert any(p["port"] == 9092 for r in np["spec"]["egress"] for p in r.get("ports", []))
    assert [s["metadata"]["name"] for s in kinds(gateway_kafka, "Secret")] == [
        f"{RELEASE}-callscribe-api-keys"]
    # standalone (the default): no --kafka, no Kafka credentials in the gateway
    c = container(deployment(default, "gateway"))
    assert "--kafka" not in c["args"] and "CALLSCRIBE_KAFKA_SASL_PASSWORD" not in env_of(c)


# --- production extras -------------------------------------------------------------------------

def test_ingress_has_websocket_timeouts(production: list[dict], default: list[dict]) -> None:
    assert not kinds(default, "Ingress")
    ing = one(production, "Ingress", "gateway")
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ann["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"][0]["hosts"] == ["asr.example.com"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(production, "Service", "gateway")["metadata"]["name"],
                       "port": {"name": "http"}}


def test_model_volume_sets_the_model_dir(production: list[dict]) -> None:
    model = production_values()["model"]
    for component in ("gateway", "worker"):
        dep = deployment(production, component)
        pod = dep["spec"]["template"]["spec"]
        vol = next(v for v in pod["volumes"] if v["name"] == "model")
        assert vol["persistentVolumeClaim"] == {"claimName": model["existingClaim"], "readOnly": True}
        c = container(dep)
        mount = next(m for m in c["volumeMounts"] if m["name"] == "model")
        assert mount["mountPath"] == "/models" and mount["readOnly"] is True
        assert env_of(c)["CALLSCRIBE_MODEL_DIR"]["value"] == f"/models/{model['subPath']}"


def test_no_model_volume_uses_the_bundled_model(default: list[dict], hpa: list[dict]) -> None:
    for docs in (default, hpa):
        for dep in kinds(docs, "Deployment"):
            assert "CALLSCRIBE_MODEL_DIR" not in env_of(container(dep))
            assert "model" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}


def test_service_monitors_scrape_metrics(production: list[dict]) -> None:
    for component, port in (("gateway", "http"), ("worker", "metrics")):
        sm = one(production, "ServiceMonitor", component)
        svc = one(production, "Service", component)
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] == port and endpoint["path"] == "/metrics"
        assert port in {p["name"] for p in svc["spec"]["ports"]}


def test_network_policies(production: list[dict]) -> None:
    for component in ("gateway", "worker"):
        np = one(production, "NetworkPolicy", component)
        pod_labels = deployment(production, component)["spec"]["template"]["metadata"]["labels"]
        assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
        assert 53 in egress_ports
    worker = one(production, "NetworkPolicy", "worker")
    kafka_rule = next(r for r in worker["spec"]["egress"] if any(p["port"] == 9093 for p in r["ports"]))
    assert kafka_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    (ingress,) = worker["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    gateway = one(production, "NetworkPolicy", "gateway")
    sources = [r["from"] for r in gateway["spec"]["ingress"]]
    assert [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}] in sources


def test_production_gateway_drains_long_calls(production: list[dict]) -> None:
    c = container(deployment(production, "gateway"))
    assert c["args"][c["args"].index("--drain-seconds") + 1] == "600"
    grace = deployment(production, "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 15 + 600 + 15 + 5
    # Guaranteed QoS
    assert c["resources"]["requests"] == c["resources"]["limits"]


def test_worker_role_is_a_cli_command() -> None:
    from callscribe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    if "worker" not in sub.choices:
        pytest.skip("`callscribe worker` is not in the CLI yet (the chart runs `worker`)")
    assert default_values()["worker"]["args"][0] in sub.choices


# --- what the chart refuses --------------------------------------------------------------------

@pytest.mark.parametrize("sets, message", [
    (HPA_SET + ["worker.autoscaling.maxReplicas=13"], "exceeds kafka.topics.audio.partitions"),
    (HPA_SET + ["worker.autoscaling.enabled=false", "worker.replicas=20"], "would sit idle"),
    (["worker.enabled=true"], "need kafka.bootstrapServers"),
    (["gateway.kafka.enabled=true"], "need kafka.bootstrapServers"),
    (HPA_SET + ["kafka.securityProtocol=SASL_SSL"], "needs kafka.sasl.existingSecret"),
    (["gateway.terminationGracePeriodSeconds=60"], "must be at least"),
    (["config.CALLSCRIBE_API_KEYS=abc"], "is a secret"),
    (["config.CALLSCRIBE_KAFKA_BOOTSTRAP=x:1"], "set by the chart"),
    (["model.existingClaim=a", "model.volume.emptyDir.medium=Memory"], "not both"),
    # the schema
    (["kafka.securityProtocol=TLS"], "securityProtocol"),
    (["containerSecurityContext.readOnlyRootFilesystem=false"], "readOnlyRootFilesystem"),
    (["podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    (["config.log_level=debug"], "log_level' does not match pattern"),
    (["gatway.replicas=3"], "gatway"),
    (["kafka.topics.audio.partitions=0"], "partitions"),
    (["gateway.resources.limits=null"], "limits"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refused_values(helm: str, sets: list[str], message: str) -> None:
    err = render_fails(helm, sets)
    assert message in err, err

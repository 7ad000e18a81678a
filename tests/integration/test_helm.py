"""The Helm chart (deploy/helm/ghl-consumer) renders valid manifests that hold together with
the consumer.

``helm lint`` and ``helm template`` run for real: helm is required (``tools/system-deps.sh``
builds it into ``.tools/bin``), the tests fail, never skip, without it. Every rendered object
of a built-in kind is checked against the Kubernetes schemas of ``K8S_VERSION``
(kubernetes-validate, strict: unknown fields fail); the custom resources (KEDA, Prometheus
Operator) by the structural schemas below. Renderings: the chart's defaults (a Deployment, the
profile state on an emptyDir), ``deploy/helm/values-managed.yaml`` (SASL_SSL + KEDA + external
Redis + ServiceMonitor + NetworkPolicy), the example the README walks through, and each of them
with the profile state on persistent volumes (a StatefulSet).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from consumer.config import Secret, load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ghl-consumer"
MANAGED = ROOT / "deploy" / "helm" / "values-managed.yaml"
WEB = ROOT / "consumer" / "observe" / "web.py"
K8S_VERSION = "1.33.0"  # the oldest minor version of a managed cluster still supported in 2026
NAMESPACE = "ghl-prod"
PERSISTENT = ("--set", "profileState.persistent.enabled=true")
SECURED = ("--values", str(MANAGED))
RENDERINGS = {
    "default": (),
    "managed": SECURED,
    "persistent": PERSISTENT,
    "managed-persistent": (*SECURED, *PERSISTENT),
}
WORKLOADS = ("Deployment", "StatefulSet")


def helm() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    assert found, "helm not found: tools/system-deps.sh builds it into .tools/bin"
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False)


@functools.cache
def render(*args: str) -> tuple[dict[str, Any], ...]:
    result = run_helm("template", "ghl", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_error(*args: str) -> str:
    """The error of a rendering that must fail."""
    result = run_helm("template", "ghl", str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"rendered with {args}"
    return result.stderr


def one(objects: tuple[dict[str, Any], ...], kind: str, component: str = "consumer") -> Any:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and o["metadata"]["labels"].get("app.kubernetes.io/component", component) == component
    ]
    assert len(found) == 1, (kind, component, len(found))
    return found[0]


def kinds(objects: tuple[dict[str, Any], ...]) -> list[str]:
    return [o["kind"] for o in objects]


def workload(objects: tuple[dict[str, Any], ...]) -> Any:
    """The consumer's Deployment, or its StatefulSet (profile state on persistent volumes)."""
    [found] = [
        o
        for o in objects
        if o["kind"] in WORKLOADS
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "consumer"
    ]
    return found


def container(objects: tuple[dict[str, Any], ...]) -> Any:
    [consumer] = workload(objects)["spec"]["template"]["spec"]["containers"]
    return consumer


# -- custom resources: the fields the chart uses, by structure ----------------------------------

_STR = {"type": "string", "minLength": 1}
_INT = {"type": "integer"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
        "additionalProperties": False,
    }


_METADATA = {"type": "object", "required": ["name", "namespace", "labels"]}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1}
_SELECTOR = _obj({"matchLabels": _LABELS})
_ENDPOINT = _obj({"port": _STR, "path": _STR, "interval": _STR})
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): _obj(
        {
            "scaleTargetRef": _obj(
                {"name": _STR}, {"apiVersion": _STR, "kind": {"enum": list(WORKLOADS)}}
            ),
            "minReplicaCount": _INT,
            "maxReplicaCount": _INT,
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": _obj(
                    {
                        "type": {"const": "kafka"},
                        "metadata": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                    },
                    {"authenticationRef": _obj({"name": _STR})},
                ),
            },
        },
        {"pollingInterval": _INT, "cooldownPeriod": _INT, "advanced": {"type": "object"}},
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): _obj(
        {
            "secretTargetRef": {
                "type": "array",
                "minItems": 1,
                "items": _obj({"parameter": _STR, "name": _STR, "key": _STR}),
            }
        }
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _obj(
        {"selector": _SELECTOR, "endpoints": {"type": "array", "items": _ENDPOINT}}
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _obj(
        {"selector": _SELECTOR, "podMetricsEndpoints": {"type": "array", "items": _ENDPOINT}}
    ),
}


def validate(document: dict[str, Any]) -> None:
    schema = CRD_SCHEMAS.get((document["apiVersion"], document["kind"]))
    if schema is None:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        return
    jsonschema.validate(document["metadata"], _METADATA)
    assert set(document) == {"apiVersion", "kind", "metadata", "spec"}, document["kind"]
    jsonschema.validate(document["spec"], schema)


# -- the configuration the pods get -------------------------------------------------------------


def walk(value: Any) -> Iterator[Any]:
    yield value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            yield from walk(child)


def secret_value(name: str, key: str) -> str:
    """What a test puts into Secret ``name``, key ``key``: a marker never in the chart (a URL
    with a password for a Redis URL)."""
    if key == "url":
        return f"rediss://:secret-{name}@redis.example.com:6380/0"
    return f"secret-{name}-{key}"


POD_NAME = "ghl-ghl-consumer-0"
POD_FIELDS = {"metadata.name": POD_NAME, "metadata.namespace": NAMESPACE}


def pod_environment(objects: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The container's environment as the kubelet makes it, in the pod ``POD_NAME``: Secret
    and field references resolved, ``$(NAME)`` replaced by an earlier variable's value."""
    env: dict[str, str] = {}
    for entry in container(objects)["env"]:
        if "value" in entry:
            env[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"]
            )
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = POD_FIELDS[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_value(ref["name"], ref["key"])
    return env


def mounted_files(objects: tuple[dict[str, Any], ...], root: Path) -> dict[str, Path]:
    """The files the container's Secret volumes provide, written under ``root``: mount path
    of each volume -> its directory there."""
    pod = workload(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {}
    for mount in container(objects)["volumeMounts"]:
        volume = volumes.get(mount["name"], {})  # absent: a StatefulSet's claim
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"], **volume["secret"]})
        if not sources:
            continue
        directory = root / mount["name"]
        for source in sources:
            for item in source["items"]:
                path = directory / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(secret_value(source["name"], item["key"]))
        mounts[mount["mountPath"]] = directory
    return mounts


def pod_settings(objects: tuple[dict[str, Any], ...], root: Path) -> Any:
    """``load_settings`` over what a pod sees: the rendered config.toml at the path the args
    name, the Deployment's environment, the Secret volumes' files (each placed under ``root``
    and the config's paths pointed there)."""
    consumer = container(objects)
    args = consumer["args"]
    config_path = args[args.index("--config") + 1]
    [mount] = [m for m in consumer["volumeMounts"] if m["mountPath"] == config_path]
    text = one(objects, "ConfigMap")["data"][mount["subPath"]]
    for mount_path, directory in mounted_files(objects, root).items():
        text = text.replace(f'"{mount_path}/', f'"{directory}/')
    (root / "config.toml").write_text(text)
    return load_settings(str(root / "config.toml"), pod_environment(objects))


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_helm_lint(values: tuple[str, ...]) -> None:
    result = run_helm("lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_rendered_manifests_are_valid(values: tuple[str, ...]) -> None:
    objects = render(*values)
    assert {"ConfigMap", "Service", "PodDisruptionBudget"} <= set(kinds(objects))
    expected = "StatefulSet" if PERSISTENT[1] in values else "Deployment"
    assert workload(objects)["kind"] == expected
    for document in objects:
        validate(document)
        assert document["metadata"]["namespace"] == NAMESPACE, document["kind"]


def test_the_custom_resource_check_catches_mistakes() -> None:
    scaled = next(o for o in render(*SECURED) if o["kind"] == "ScaledObject")
    broken = {**scaled, "spec": {**scaled["spec"], "minReplicas": 1}}  # KEDA's name differs
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    service = one(render(), "Service")
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**service, "spec": {**service["spec"], "port": 9464}})


def test_defaults_and_managed_example_render_what_they_promise() -> None:
    assert sorted(kinds(render())) == sorted(
        ["ConfigMap", "Deployment", "Deployment", "Service", "Service", "PodDisruptionBudget"]
    )  # the consumer and the bundled Redis
    assert sorted(kinds(render(*SECURED))) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ScaledObject",
            "TriggerAuthentication",
            "ServiceMonitor",
        ]
    )
    # persistent profile state: the consumer's StatefulSet in place of its Deployment
    assert sorted(kinds(render(*SECURED, *PERSISTENT))) == sorted(
        ["StatefulSet" if k == "Deployment" else k for k in kinds(render(*SECURED))]
    )


def test_image_defaults_to_the_released_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    image = container(render())["image"]
    assert image == f"ghcr.io/ghl-consumer/ghl-consumer:{chart['appVersion']}"
    assert container(render("--set", "image.tag=1.2.3"))["image"].endswith(":1.2.3")


@pytest.mark.parametrize("persistent", [(), PERSISTENT], ids=["deployment", "statefulset"])
def test_keda_owns_the_replica_count(persistent: tuple[str, ...]) -> None:
    assert workload(render(*persistent))["spec"]["replicas"] == 2
    objects = render(*SECURED, *persistent)
    target = workload(objects)
    assert "replicas" not in target["spec"]
    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": target["apiVersion"],
        "kind": target["kind"],
        "name": target["metadata"]["name"],
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 6)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        (("--set", "replicaCount=7"), "replicaCount (7) > kafka.partitions (6)"),
        ((*SECURED, "--set", "keda.maxReplicas=8"), "keda.maxReplicas (8) > kafka.partitions"),
        ((*SECURED, "--set", "keda.minReplicas=7"), "keda.minReplicas"),
    ],
)
def test_the_sizing_rule_is_enforced(values: tuple[str, ...], field: str) -> None:
    assert field in render_error(*values)


def test_keda_reads_the_lag_the_consumer_makes(tmp_path: Path) -> None:
    objects = render(*SECURED)
    settings = pod_settings(objects, tmp_path)
    triggers = one(objects, "ScaledObject")["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == list(settings.kafka.topics)
    librdkafka = settings.kafka.librdkafka
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == settings.kafka.bootstrap_servers
        assert meta["consumerGroup"] == settings.kafka.group_id
        assert meta["offsetResetPolicy"] == settings.kafka.auto_offset_reset
        assert meta["allowIdleConsumers"] == "false"  # never more members than partitions
        assert librdkafka["security.protocol"] == "SASL_SSL"
        assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
        assert librdkafka["sasl.mechanism"] == "SCRAM-SHA-512"
        auth = trigger["authenticationRef"]["name"]
        assert auth == one(objects, "TriggerAuthentication")["metadata"]["name"]


def test_trigger_authentication_uses_the_consumer_secrets(tmp_path: Path) -> None:
    """Every credential KEDA gets is the one the consumer reads, from the same Secret key."""
    objects = render(*SECURED)
    settings = pod_settings(objects, tmp_path)
    refs = one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]
    given = {r["parameter"]: secret_value(r["name"], r["key"]) for r in refs}
    assert set(given) == {"username", "password", "ca"}
    librdkafka = settings.kafka.extra_settings()
    assert given["username"] == librdkafka["sasl.username"]
    assert given["password"] == librdkafka["sasl.password"]
    assert Path(librdkafka["ssl.ca.location"]).read_text() == given["ca"]


def test_mutual_tls_gives_keda_and_the_consumer_the_same_files(tmp_path: Path) -> None:
    objects = render(
        *SECURED,
        "--set",
        "kafka.securityProtocol=SSL,kafka.tls.certKey=tls.crt,kafka.tls.keyKey=tls.key",
    )
    settings = pod_settings(objects, tmp_path).kafka.extra_settings()
    refs = one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"]
    given = {r["parameter"]: secret_value(r["name"], r["key"]) for r in refs}
    assert set(given) == {"ca", "cert", "key"}
    for parameter, setting in (
        ("ca", "ssl.ca.location"),
        ("cert", "ssl.certificate.location"),
        ("key", "ssl.key.location"),
    ):
        assert Path(settings[setting]).read_text() == given[parameter]
    trigger = one(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (trigger["sasl"], trigger["tls"]) == ("none", "enable")
    assert "sasl.username" not in settings


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_the_rendered_config_loads_with_the_pod_environment(
    values: tuple[str, ...], tmp_path: Path
) -> None:
    settings = pod_settings(render(*values), tmp_path)
    assert settings.metrics.host == "0.0.0.0"
    for integration in settings.integrations:
        # tokens come from the Secret (a file by default), the value is what the Secret holds
        assert integration.access_token.file is not None
        assert integration.access_token.reveal() == secret_value(
            "ghl-consumer-tokens", integration.id
        )
    assert settings.kafka.topics == ("events",)


def test_managed_example_config(tmp_path: Path) -> None:
    settings = pod_settings(render(*SECURED), tmp_path)
    assert [i.id for i in settings.integrations] == ["default", "eu-shop"]
    assert settings.redis.url == secret_value("ghl-consumer-redis", "url")
    assert settings.kafka.bootstrap_servers == "kafka-prod.example.aivencloud.com:24563"
    assert settings.kafka.create_topics is False


def test_further_settings_reach_the_consumer(tmp_path: Path) -> None:
    values = {
        "kafka": {
            "extra": {"session_timeout_ms": 30000, "dead_letter_topic": "ghl.dlq"},
            "librdkafka": {"fetch.max.bytes": 4194304, "enable.ssl.certificate.verification": True},
        },
        "extraConfigToml": "[engine]\nmax_in_flight = 32\n",
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    settings = pod_settings(render("--values", str(tmp_path / "values.yaml")), tmp_path)
    assert settings.kafka.session_timeout_ms == 30000
    assert settings.kafka.dead_letter_topic == "ghl.dlq"
    assert settings.kafka.librdkafka["fetch.max.bytes"] == "4194304"
    assert settings.kafka.librdkafka["enable.ssl.certificate.verification"] == "true"
    assert settings.engine.max_in_flight == 32
    assert "kafka.extra.group_id: set by the chart" in render_error(
        "--set", "kafka.extra.group_id=other"
    )


def test_tokens_as_environment_variables(tmp_path: Path) -> None:
    objects = render(*SECURED, "--set", "tokenAs=env")
    settings = pod_settings(objects, tmp_path)
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container(objects)["env"]
        if "valueFrom" in e
    }
    assert env["GHL_TOKEN_EU_SHOP"] == {"name": "ghl-consumer-tokens", "key": "eu-shop"}
    tokens = {i.id: i.access_token for i in settings.integrations}
    assert tokens["eu-shop"].source == "environment variable GHL_TOKEN_EU_SHOP"
    assert tokens["eu-shop"].reveal() == secret_value("ghl-consumer-tokens", "eu-shop")


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_probes_match_the_consumer_and_its_routes(values: tuple[str, ...], tmp_path: Path) -> None:
    objects = render(*values)
    settings = pod_settings(objects, tmp_path)
    consumer = container(objects)
    ports = {p["name"]: p["containerPort"] for p in consumer["ports"]}
    assert ports == {"metrics": settings.metrics.port}
    routes = set(re.findall(r'router\.add_get\("(/\w+)"', WEB.read_text()))
    assert consumer["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert consumer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"/readyz", "/healthz"} <= routes
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= (
        workload(objects)["spec"]["template"]["metadata"]["labels"].items()
    )


def test_a_changed_metrics_port_moves_everything(tmp_path: Path) -> None:
    objects = render("--set", "metrics.port=9100")
    assert pod_settings(objects, tmp_path).metrics.port == 9100
    assert container(objects)["ports"][0]["containerPort"] == 9100
    assert one(objects, "Service")["spec"]["ports"][0]["port"] == 9100
    annotations = workload(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9100"


def scrapes(objects: tuple[dict[str, Any], ...]) -> list[str]:
    """Every way a Prometheus setup would find the consumer's pods."""
    found = [o["kind"] for o in objects if o["kind"] in ("PodMonitor", "ServiceMonitor")]
    for o in objects:
        if (
            o["kind"] in WORKLOADS
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == "consumer"
        ):
            annotations = o["spec"]["template"]["metadata"].get("annotations", {})
            if annotations.get("prometheus.io/scrape") == "true":
                found.append("pod annotations")
        if "prometheus.io/scrape" in o["metadata"].get("annotations", {}):
            found.append(f"{o['kind']} annotations")
    return found


def test_each_pod_is_scraped_once() -> None:
    assert scrapes(render()) == ["pod annotations"]
    assert scrapes(render(*PERSISTENT)) == ["pod annotations"]
    assert scrapes(render(*SECURED, *PERSISTENT)) == ["ServiceMonitor"]
    assert scrapes(render(*SECURED)) == ["ServiceMonitor"]
    assert scrapes(render("--set", "metrics.podMonitor.enabled=true")) == ["PodMonitor"]
    assert scrapes(render("--set", "metrics.podAnnotations=false")) == []
    both = "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true"
    assert "scrape every pod twice" in render_error("--set", both)


def test_rollout_strategy_and_disruption_budget() -> None:
    for values in RENDERINGS.values():
        objects = render(*values)
        consumer = workload(objects)
        if consumer["kind"] == "Deployment":
            assert consumer["spec"]["strategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            }
        else:  # one pod at a time, replaced by one of the same name and claim
            assert consumer["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
            assert consumer["spec"]["podManagementPolicy"] == "Parallel"
            assert consumer["spec"]["serviceName"] == one(objects, "Service")["metadata"]["name"]
        budget = one(objects, "PodDisruptionBudget")
        assert budget["spec"]["maxUnavailable"] == 1
        labels = consumer["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pods_run_locked_down() -> None:
    for values in RENDERINGS.values():
        objects = render(*values)
        for deployment in (o for o in objects if o["kind"] in WORKLOADS):
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            for c in pod["containers"]:
                assert c["securityContext"]["readOnlyRootFilesystem"] is True
                assert c["securityContext"]["allowPrivilegeEscalation"] is False
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
                assert "memory" in c["resources"]["limits"]


def rendered_config(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The consumer's config.toml as rendered, parsed."""
    config: dict[str, Any] = tomllib.loads(one(objects, "ConfigMap")["data"]["config.toml"])
    return config


def state_mount(objects: tuple[dict[str, Any], ...]) -> Any:
    [mount] = [m for m in container(objects)["volumeMounts"] if m["name"] == "state"]
    return mount


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_profile_state_lives_on_a_writable_volume(values: tuple[str, ...]) -> None:
    objects = render(*values)
    consumer = workload(objects)
    pod = consumer["spec"]["template"]["spec"]
    mount = state_mount(objects)
    assert mount == {"name": "state", "mountPath": "/var/lib/ghl-consumer/state"}  # writable
    # the root filesystem stays read-only: the volume (and /tmp) are the only writable places
    assert container(objects)["securityContext"]["readOnlyRootFilesystem"] is True
    # a persistent volume's files belong to the pod's group, whatever uid wrote them before
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    profiles = rendered_config(objects)["profiles"]
    assert profiles == {"state_dir": mount["mountPath"], "cache_entries": 100_000}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if consumer["kind"] == "Deployment":
        assert volumes["state"] == {"name": "state", "emptyDir": {"sizeLimit": "2Gi"}}
        return
    assert "state" not in volumes  # each pod's claim, from the template
    [claim] = consumer["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "4Gi"}},
    }  # no storageClassName: the cluster's default class
    assert consumer["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain",
        "whenDeleted": "Retain",
    }


@pytest.mark.parametrize("values", [(), PERSISTENT], ids=["emptydir", "persistent"])
def test_the_profile_state_settings_reach_the_consumer(
    values: tuple[str, ...], tmp_path: Path
) -> None:
    objects = render(*values)
    settings = pod_settings(objects, tmp_path)
    assert settings.profiles.state_dir == state_mount(objects)["mountPath"]
    assert settings.profiles.cache_entries == 100_000


def test_profile_state_values() -> None:
    objects = render(
        "--set",
        "profileState.mountPath=/state,profileState.cacheEntries=250000,"
        "profileState.emptyDir.sizeLimit=10Gi",
    )
    assert state_mount(objects)["mountPath"] == "/state"
    assert rendered_config(objects)["profiles"] == {"state_dir": "/state", "cache_entries": 250000}
    pod = workload(objects)["spec"]["template"]["spec"]
    assert {"name": "state", "emptyDir": {"sizeLimit": "10Gi"}} in pod["volumes"]
    stateful = workload(
        render(
            *PERSISTENT,
            "--set",
            "profileState.persistent.storageClass=fast-ssd,profileState.persistent.size=20Gi,"
            "profileState.persistent.whenScaled=Delete",
        )
    )["spec"]
    [claim] = stateful["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert stateful["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_a_statefulset_pod_is_a_static_member_named_after_itself(
    values: tuple[str, ...], tmp_path: Path
) -> None:
    objects = render(*values)
    instance = pod_settings(objects, tmp_path).kafka.group_instance_id
    if workload(objects)["kind"] == "Deployment":  # no state survives a pod: dynamic membership
        assert instance == ""
        assert "KAFKA_GROUP_INSTANCE_ID" not in pod_environment(objects)
    else:  # what the consumer is given: its pod's name, unique across namespaces
        assert instance == f"{NAMESPACE}.{POD_NAME}"


def test_static_membership_can_be_turned_off(tmp_path: Path) -> None:
    objects = render(*PERSISTENT, "--set", "profileState.persistent.staticMembership=false")
    assert workload(objects)["kind"] == "StatefulSet"
    assert pod_settings(objects, tmp_path).kafka.group_instance_id == ""
    assert "/profileState/persistent/staticMembership" in render_error(
        *PERSISTENT, "--set", "profileState.persistent.staticMembership=yes"
    )


def test_profile_state_off_keeps_every_profile_in_memory() -> None:
    objects = render("--set", "profileState.enabled=false")
    assert workload(objects)["kind"] == "Deployment"
    assert "state" not in [m["name"] for m in container(objects)["volumeMounts"]]
    assert "state" not in [
        v["name"] for v in workload(objects)["spec"]["template"]["spec"]["volumes"]
    ]
    assert "profiles" not in rendered_config(objects)
    assert "profileState.persistent.enabled needs profileState.enabled" in render_error(
        "--set", "profileState.enabled=false,profileState.persistent.enabled=true"
    )
    assert "/profileState/mountPath" in render_error("--set", "profileState.mountPath=state")
    # the state follows one input topic's partitions (the consumer refuses more at start-up)
    assert "kafka.topics has 2" in render_error("--set", "kafka.topics={events,orders}")
    two = render("--set", "kafka.topics={events,orders},profileState.enabled=false")
    assert "profiles" not in rendered_config(two)


def test_extra_profiles_settings_join_the_charts(tmp_path: Path) -> None:
    """A [profiles] table in extraConfigToml (encryption keys) takes the chart's keys: a TOML
    table is written once."""
    extra = (
        "[engine]\nmax_in_flight = 32\n\n[profiles]  # sealed at rest\n"
        'encryption_key_id = "k1"\n'
        'encryption_keys = [{ id = "k1", key = { env = "PROFILE_KEY" } }]\n\n'
        "[delivery]\nmax_attempts = 5\n"
    )
    (tmp_path / "values.yaml").write_text(yaml.safe_dump({"extraConfigToml": extra}))
    config = rendered_config(render("--values", str(tmp_path / "values.yaml")))
    assert config["profiles"] == {
        "state_dir": "/var/lib/ghl-consumer/state",
        "cache_entries": 100_000,
        "encryption_key_id": "k1",
        "encryption_keys": [{"id": "k1", "key": {"env": "PROFILE_KEY"}}],
    }
    assert config["engine"] == {"max_in_flight": 32}
    assert config["delivery"] == {"max_attempts": 5}
    refused = "[profiles] state_dir and cache_entries are set by the chart from profileState"
    assert refused in render_error("--set-string", "extraConfigToml=[profiles]\ncache_entries=5")
    off = render("--set", "profileState.enabled=false", "--values", str(tmp_path / "values.yaml"))
    assert "state_dir" not in rendered_config(off)["profiles"]


def test_redis_is_wired(tmp_path: Path) -> None:
    objects = render()
    redis = one(objects, "Service", "redis")
    env = pod_environment(objects)
    assert env["REDIS_URL"] == f"redis://{redis['metadata']['name']}:6379/0"
    assert pod_settings(objects, tmp_path).redis.url == env["REDIS_URL"]
    pods = one(objects, "Deployment", "redis")["spec"]["template"]["metadata"]["labels"]
    assert redis["spec"]["selector"].items() <= pods.items()
    assert "REDIS_URL" not in pod_environment(render("--set", "redis.bundled=false,replicaCount=1"))
    assert "redis.bundled=true or redis.external.existingSecret" in render_error(
        "--set", "redis.bundled=false"
    )


def test_network_policy() -> None:
    objects = render(*SECURED)
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    [ingress] = spec["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
    assert egress == {53, 24563, 443, 6380}  # DNS, the bootstrap's port, HighLevel, Redis
    pods = workload(objects)["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pods.items()
    persistent = workload(render(*SECURED, *PERSISTENT))["spec"]["template"]["metadata"]
    assert spec["podSelector"]["matchLabels"].items() <= persistent["labels"].items()
    # the bundled Redis: reachable from the consumer only
    bundled = render("--set", "networkPolicy.enabled=true")
    redis_policy = next(o for o in bundled if o["metadata"]["name"].endswith("-redis"))
    assert redis_policy["spec"]["egress"] == []
    [source] = redis_policy["spec"]["ingress"][0]["from"]
    assert source["podSelector"]["matchLabels"].items() <= pods.items()


@pytest.mark.parametrize("values", RENDERINGS.values(), ids=RENDERINGS.keys())
def test_no_secret_in_the_rendered_manifests(values: tuple[str, ...], tmp_path: Path) -> None:
    objects = render(*values)
    assert "Secret" not in kinds(objects)
    for entry in container(objects)["env"]:
        if re.search(r"TOKEN|PASSWORD|USERNAME|SECRET", entry["name"]) or (
            entry["name"] == "REDIS_URL" and "@" in entry.get("value", "@")
        ):
            assert set(entry) == {"name", "valueFrom"}, entry["name"]
    settings = pod_settings(objects, tmp_path)
    for secret in (v for v in settings.kafka.librdkafka.values() if isinstance(v, Secret)):
        assert secret.source.startswith("environment variable"), secret.source
    text = yaml.safe_dump_all(objects)
    assert "secret-" not in text  # no test Secret value could be rendered


INTEGRATION = {"id": "default", "locationId": "ve9EPM428h8vShlRW1KT"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"integrations": [{**INTEGRATION, "token": "pit-12345"}]}, "/integrations/0/token"),
        (
            {"kafka": {"librdkafka": {"sasl.password": "hunter2"}}},
            "kafka.librdkafka.sasl.password: a secret is never a value",
        ),
        (
            {
                "integrations": [
                    {
                        **INTEGRATION,
                        "token": {"secretName": "tokens", "key": "default"},
                        "extraToml": 'access_token = "pit-12345"',
                    }
                ]
            },
            "integrations[0].extraToml: the token comes from integrations[0].token",
        ),
        ({"kafka": {"securityProtocol": "SASL_SSL"}}, "kafka.sasl.existingSecret: required"),
        ({"kafka": {"tls": {"certKey": "tls.crt"}}}, "kafka.tls.existingSecret: required"),
    ],
)
def test_values_that_would_leak_or_break_are_refused(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    error = render_error("--values", str(tmp_path / "values.yaml"))
    assert message in error
    assert "pit-12345" not in error
    assert "hunter2" not in error

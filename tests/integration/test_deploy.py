"""docker-compose.yml, deploy/Dockerfile and deploy/prometheus.yml hold together (the Helm chart:
test_helm.py).

``docker compose config`` (or Debian's ``docker-compose``) validates the compose file without a
Docker engine; ``promtool`` (Debian's ``prometheus``) validates the Prometheus config. Both are
required: the tests fail, never skip, without them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import load_settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
METRICS_PORT = 9464  # the default of metrics.port (docs/architecture.md, "Configuration")


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither `docker compose` nor docker-compose: apt-get install docker-compose"
    return [legacy]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# -- docker compose -----------------------------------------------------------------------------


def test_compose_config_is_valid() -> None:
    result = subprocess.run(
        [*compose_command(), "--file", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},  # no user overrides of the defaults
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_the_pipeline() -> None:
    services = compose()["services"]
    assert {"kafka", "redis", "consumer", "sandbox", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    for name in ("consumer", "sandbox"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["sandbox"]["command"][0] == "sandbox"


def test_compose_consumer_is_wired_to_its_neighbours() -> None:
    services = compose()["services"]
    env = services["consumer"]["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "http://sandbox:8900" in env["GHL_API_BASE_URL"]
    # the sandbox is not loopback from the consumer's container: plain http is allowed explicitly
    defaults = {
        name: re.sub(r"\$\{\w+:-(.*)\}", r"\1", str(value)) for name, value in env.items()
    }
    assert load_settings(None, defaults).highlevel.api_base_url == "http://sandbox:8900"
    assert int(env["METRICS_PORT"]) == METRICS_PORT
    prometheus = yaml.safe_load(PROMETHEUS.read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"consumer:{METRICS_PORT}"]


def test_compose_publishes_ports_on_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} publicly"


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    mounts = " ".join(compose()["services"]["grafana"]["volumes"])
    assert "./grafana/provisioning" in mounts
    assert "./grafana/dashboards" in mounts


# -- the image ----------------------------------------------------------------------------------


def test_dockerfile_is_small_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text[: text.index("\nFROM ")], re.MULTILINE))
    stages = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image)
        for image in re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    ]
    assert stages
    assert all("slim" in image for image in stages)
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert users, "the final stage must set USER"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert 'ENTRYPOINT ["ghl-consumer"]' in final
    assert f"EXPOSE {METRICS_PORT}" in final
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    assert "*" in ignore.splitlines(), "the build context must exclude everything by default"


def test_the_image_is_built_from_pinned_inputs() -> None:
    """The base image by its full version, named once; every dependency from the hashed lock
    (issue 15)."""
    text = DOCKERFILE.read_text()
    [image] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2
    assert "-r requirements.lock" in text
    assert text.count("--require-hashes") == 2  # wheels built, and installed, from the lock
    assert "!requirements.lock" in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = project["dependencies"], project["optional-dependencies"]["dev"]
    for lock, wanted in (("requirements.lock", runtime), ("requirements-dev.lock", runtime + dev)):
        text = (ROOT / lock).read_text()
        pinned = re.findall(r"^([\w.-]+)==\S+(?: ;[^\\]*)? \\$", text, re.MULTILINE)
        hashed = re.findall(r"^[\w.-]+==\S+(?: ;[^\\]*)? \\\n    --hash=sha256:\w{64}", text, re.M)
        assert len(pinned) == len(hashed) == len(re.findall(r"^\S+==", text, re.M)), lock
        names = {name.lower().replace("_", "-") for name in pinned}
        for requirement in wanted:
            assert re.split(r"[<>=\[ ]", requirement)[0].lower() in names, (lock, requirement)


# -- prometheus ---------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    shutil.copy(ROOT / "grafana" / "alerts.yml", tmp_path / "alerts.yml")
    config = PROMETHEUS.read_text().replace("/etc/prometheus/alerts.yml", "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(config)
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr

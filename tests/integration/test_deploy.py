"""docker-compose.yml, deploy/Dockerfile and deploy/prometheus.yml hold together (the Helm chart:
test_helm.py).

``docker compose config`` (or Debian's ``docker-compose``) validates the compose file without a
Docker engine; ``promtool`` (Debian's ``prometheus``) validates the Prometheus config. Both are
required: the tests fail, never skip, without them.
"""

from __future__ import annotations

import json
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
DOCKERIGNORE = ROOT / ".dockerignore"
MAKEFILE = ROOT / "Makefile"
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
    wanted = {"kafka", "redis", "consumer", "sandbox", "loadgen", "prometheus", "grafana"}
    assert wanted <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    for name in ("consumer", "sandbox", "loadgen"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["sandbox"]["command"][0] == "sandbox"


def test_compose_image_name_is_the_makefiles() -> None:
    """One image name: the Makefile's IMAGE (``make image``) is the compose default."""
    [image] = re.findall(r"^IMAGE \?= (\S+)$", MAKEFILE.read_text(), re.MULTILINE)
    assert image == "ghcr.io/ghl-consumer/ghl-consumer"
    for name in ("consumer", "sandbox", "loadgen"):
        assert compose()["services"][name]["image"] == (
            f"${{GHL_CONSUMER_IMAGE:-{image}}}:${{GHL_CONSUMER_TAG:-local}}"
        )


def test_compose_has_live_traffic_429s_and_dead_letters() -> None:
    """The loadgen produces at a steady rate (with dead-letter records) to the topic the
    consumer reads, and the sandbox's window is small enough that its 429s show."""
    services = compose()["services"]
    command = services["loadgen"]["command"]
    assert command[:2] == ["demo", "--load"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options["--topic"] == services["consumer"]["environment"]["KAFKA_TOPICS"]
    assert re.fullmatch(r"\$\{LOADGEN_RATE:-(\d+)\}", options["--rate"])
    assert services["loadgen"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["loadgen"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )
    sandbox = {
        arg.split("=")[0]: arg.split("=", 1)[1]
        for arg in services["sandbox"]["command"]
        if "=" in arg
    }
    burst = int(re.sub(r"\$\{\w+:-(\d+)\}", r"\1", sandbox["--burst"]))
    interval_ms = int(sandbox["--interval-ms"])
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "KAFKA_TOPICS": "events",
        "GHL_LOCATION_ID": "loc",
        "GHL_ACCESS_TOKEN": "t",
    }
    delivery = load_settings(None, environ).delivery
    paced = delivery.rate_sustained / delivery.rate_interval_seconds  # requests/s it sends
    assert burst / (interval_ms / 1000) < paced  # so the sandbox answers 429
    # the image's /healthz check fits only the consumer
    for name in ("sandbox", "loadgen"):
        assert services[name]["healthcheck"] == {"disable": True}


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


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuation
    lines joined and comments dropped; the ARGs before the first FROM are left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), " ".join(arguments.split())))
    return stages


def test_dockerfile_builds_without_buildkit() -> None:
    """No BuildKit-only syntax: the legacy builder (docker-compose v1) builds it too."""
    text = DOCKERFILE.read_text()
    steps = [f"{i} {a}" for stage in dockerfile_stages() for i, a in stage]
    assert not [step for step in steps if "--mount" in step]
    assert "# syntax=" not in text
    assert not re.search(r"<<\s*\w+", text), "no heredocs"
    assert not re.search(r"^\s*(?:COPY|ADD) --(?:link|chmod|parents)", text, re.MULTILINE)
    assert not (ROOT / "deploy" / "Dockerfile.dockerignore").exists(), (
        "one .dockerignore, at the root: the legacy builder reads no other"
    )


def test_dockerfile_is_small_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text[: text.index("\nFROM ")], re.MULTILINE))
    stages = dockerfile_stages()
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], s[0][1].split()[0]) for s in stages]
    assert len(stages) == 2, "a build stage and the runtime stage"
    assert all("slim" in image for image in images)
    assert stages[0][0][1].endswith(" AS build")
    final = stages[-1]
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users, "the final stage must set USER"
    assert users[-1].split(":")[0] not in {"0", "root"}
    assert ("ENTRYPOINT", '["ghl-consumer"]') in final
    assert ("EXPOSE", str(METRICS_PORT)) in final
    for instruction, arguments in (step for stage in stages for step in stage):
        if instruction == "COPY" and not arguments.startswith("--from"):
            for path in arguments.split()[:-1]:
                assert (ROOT / path).exists(), path
                assert f"!{path.rstrip('/')}" in DOCKERIGNORE.read_text().replace("/\n", "\n")
    assert "*" in DOCKERIGNORE.read_text().splitlines(), "exclude everything by default"


def test_the_final_stage_has_no_packaging_tools() -> None:
    """The runtime image runs the venv built in the build stage; pip, setuptools, wheel and
    ensurepip's bundled pip are removed from the base image, and nothing is installed there."""
    build, final = dockerfile_stages()
    assert any(
        instruction == "RUN" and "python -m venv --without-pip /opt/venv" in arguments
        for instruction, arguments in build
    )
    runs = " && ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert "pip uninstall --yes --no-cache-dir pip setuptools wheel" in runs
    assert "ensurepip" in runs
    assert " install" not in runs.replace("pip uninstall", ""), "nothing installed at run time"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    env = " ".join(arguments for instruction, arguments in final if instruction == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env


def test_the_image_checks_its_own_health() -> None:
    """HEALTHCHECK on /healthz of the metrics listener, with the image's python (no curl)."""
    final = dockerfile_stages()[-1]
    [check] = [arguments for instruction, arguments in final if instruction == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    assert "--interval=" in options
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2]
    assert "/healthz" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    assert "METRICS_PORT" in argv[2]


def test_the_image_is_built_from_pinned_inputs() -> None:
    """The base image by its full version, named once; every dependency from the hashed lock
    (issue 15)."""
    text = DOCKERFILE.read_text()
    [image] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2
    assert "-r requirements.lock" in text
    assert text.count("--require-hashes") == 1  # the venv is filled from the lock only
    assert "!requirements.lock" in DOCKERIGNORE.read_text()
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

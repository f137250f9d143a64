"""docker-compose.yml, the Dockerfile and deploy/ — checked without Docker.

Docker cannot run on the development machines, so this validates what can be
validated: the files parse, every service's command is a valid `worker` command line
(parsed by click's own command objects), the ports line up between the worker,
Prometheus and Grafana, and every metric the dashboard queries is one the worker
exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from worker.cli import cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "worker.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def worker_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "worker:local"}


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def parse(args: list[str]) -> tuple[click.Command, dict[str, Any]]:
    """Parse ``worker ARGS`` with click, as the CLI would (no command runs); returns
    the leaf command and its parameters."""
    ctx = click.Context(cli, info_name="worker", auto_envvar_prefix="WORKER")
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        assert name in command.commands, f"no command {name!r} in {ctx.command_path}"
        command = command.commands[name]
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=ctx)
    return command, command.make_context(name, rest, parent=ctx).params


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"kafka", "topics", "worker", "simulator", "prometheus", "grafana"}
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, single node
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]  # reachable on the compose network
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= 8 * 1024 * 1024  # snapshot chunks
    assert set(worker_services(compose)) == {"topics", "worker", "simulator"}
    for service in worker_services(compose).values():
        assert service["build"] == "."


def test_every_command_is_a_valid_worker_command_line(compose: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [k for k in os.environ if k.startswith("WORKER_")]:
        monkeypatch.delenv(name)  # only what compose gives counts
    commands = {}
    for name, service in worker_services(compose).items():
        args = service["command"]
        assert isinstance(args, list) and all(isinstance(a, str) for a in args), name
        for key, value in (service.get("environment") or {}).items():
            monkeypatch.setenv(key, str(value).replace("${WORKER_SECRET:-change-me}", "change-me"))
        command, params = parse(args)
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        assert all(a in known for a in args if a.startswith("--")), (name, args)
        assert params.get("bootstrap") == "kafka:9092", name
        commands[name] = (command, params)
        for key in service.get("environment") or {}:
            monkeypatch.delenv(key)
    assert commands["topics"][0] is cli.commands["topics"].commands["create"]
    assert commands["worker"][0] is cli.commands["run"]
    assert commands["simulator"][0] is cli.commands["simulate"]
    simulate = commands["simulator"][1]
    assert simulate["drift_every"] > 0 and simulate["rate"] > 0 and simulate["events"] == 0
    assert compose["services"]["worker"]["environment"]["WORKER_SECRET"]  # `worker run` needs one


def test_a_bad_option_would_be_caught() -> None:
    with pytest.raises(click.NoSuchOption):
        parse(["run", "--bootstrap", "kafka:9092", "--metrics-prot", "9108"])
    with pytest.raises(click.BadParameter):
        parse(["simulate", "--bootstrap", "kafka:9092", "--generator", "nope"])


def test_prometheus_scrapes_the_worker_metrics_port(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    port = int(option(worker["command"], "--metrics-port"))
    assert f"{port}:{port}" in worker["ports"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"worker:{port}"]
    assert config["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile


def test_dockerfile() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert "FROM python:3.11-slim" in lines
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert 'ENTRYPOINT ["worker"]' in lines
    # what `pip install .` needs is copied in (pyproject's readme, the package)
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    assert "pyproject.toml" in copied and "README.md" in copied and "worker" in copied


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/worker.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == mounts["./deploy/grafana/dashboards"] + "/" + DASHBOARD.name
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], panel["title"]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(dashboard_exprs())
    for needed in ("worker_model_accuracy", "worker_model_f1", "worker_model_version",
                   "worker_promotions_total", "worker_rollbacks_total", "worker_dead_letters_total",
                   "worker_consumer_lag_messages", "worker_arm_accuracy", "worker_split_percent"):
        assert needed in exprs, needed
    for role in ("champion", "challenger"):
        assert role in exprs

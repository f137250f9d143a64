"""`scripts/demo`: the main job end to end on a real Kafka broker, in about a minute.

1. a broker: ``WORKER_BOOTSTRAP``, else one answering on 127.0.0.1:9092, else the local
   one is started with ``scripts/kafka-local`` (and stopped at the end: the demo stops
   only what it started);
2. the topics, with a prefix of their own per run (``demo-<timestamp>.``);
3. ``worker run`` in the background (metrics on a free port; its log in
   ``out/demo/worker.log``);
4. ``worker simulate``: SEA with an abrupt concept drift (threshold 8 → 7) at half the
   stream, labels delayed on the labels topic, as fast as it can — the drift makes a
   challenger better than the champion, and the worker promotes it;
5. while the worker catches up, the demo asks for its status (``status`` commands on the
   control topic) four times a second: the answers are the report's points over time;
   it waits until every event was scored and every label joined (so every prediction is
   committed), and counts the committed predictions;
6. ``worker report`` from the control topic → ``out/demo/report.html`` (and ``.png``);
7. SIGTERM to the worker, then a summary that ends with ``promotions: N``,
   ``rollbacks: N`` and ``report: PATH``.

    python -m worker.demo [--events 40000] [--out out/demo]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

import click

from worker.errors import WorkerError

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"
POLL_S = 0.25


class DemoError(WorkerError):
    """A step failed: one line for the user, exit 1."""


def say(text: str) -> None:
    click.echo(f"demo: {text}", err=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="events to simulate [40000]")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder [out/demo]")
    parser.add_argument("--rate", type=float, default=3000.0,
                        help="events/s of the simulator; 0 = as fast as possible [3000]")
    parser.add_argument("--kafka-port", type=int, default=9092,
                        help="without WORKER_BOOTSTRAP: the local broker's port (started if silent) [9092]")
    parser.add_argument("--timeout", type=float, default=150.0,
                        help="seconds to wait for the worker to process everything [150]")
    parser.add_argument("--bootstrap", default=os.environ.get("WORKER_BOOTSTRAP"),
                        help="a broker that must answer (default: WORKER_BOOTSTRAP; else the local one)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}  # the children take flags only
    demo = Demo(args.events, args.out, args.timeout, args.rate, args.kafka_port, bootstrap=args.bootstrap,
                env=env)
    try:
        demo.run()
    except DemoError as e:
        say(f"failed: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        demo.cleanup()
    say(f"done in {time.monotonic() - began:.0f}s")
    return 0


class Demo:
    """The demo's steps. ``bootstrap``: a broker that must answer; None: the local one on
    ``kafka_port``, started when silent. ``env``: the environment of the child processes."""

    def __init__(self, events: int, out: Path, timeout_s: float, rate: float, kafka_port: int = 9092,
                 bootstrap: str | None = None, env: dict[str, str] | None = None) -> None:
        self.events = events
        self.rate = rate
        self.out = out
        self.timeout_s = timeout_s
        self.kafka_port = kafka_port
        self.required_broker = bootstrap is not None
        self.bootstrap = bootstrap or f"127.0.0.1:{kafka_port}"
        self.prefix = f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}."
        self.secret = secrets.token_hex(16)
        self.started_kafka = False
        self.worker: subprocess.Popen | None = None
        self.simulator: subprocess.Popen | None = None
        self.env = env  # None: this process's

    # --- steps ---------------------------------------------------------------------------

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.broker()
        self.cli("topics", "create", "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix,
                 "--partitions", "3", quiet=True)
        say(f"topics {self.prefix}* created on {self.bootstrap}")
        port = free_port()
        self.start_worker(port)
        sent = self.simulate_and_follow()
        predictions = count_committed(self.settings().consumer_config(), self.settings().topics.predictions)
        report_path = (self.out / "report.html").resolve()
        self.cli("report", "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix, "--out",
                 str(report_path), "--secret", self.secret, quiet=True)
        metrics = scrape(port)
        self.stop_worker()
        self.summary(sent, predictions, metrics, report_path)

    def broker(self) -> None:
        if self.kafka_local("ping", "--bootstrap", self.bootstrap).returncode == 0:
            say(f"using the Kafka broker at {self.bootstrap}")
            return
        if self.required_broker:
            raise DemoError(f"no Kafka broker answers at {self.bootstrap} (--bootstrap, WORKER_BOOTSTRAP)")
        say(f"no broker on {self.bootstrap}: starting the local Kafka (scripts/kafka-local start)")
        started = self.kafka_local("start", "--port", str(self.kafka_port), capture=False)
        if started.returncode != 0:
            raise DemoError("scripts/kafka-local start failed")
        self.started_kafka = True

    def start_worker(self, port: int) -> None:
        log_path = self.out / "worker.log"
        args = ["run", "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix,
                "--group", f"{self.prefix}worker", "--secret", self.secret, "--metrics-port", str(port),
                "--warmup-labels", "500", "--fresh"]
        say(f"$ worker {shlex.join(args).replace(self.secret, '***')}  (log: {log_path})")
        self._worker_log = log_path.open("wb")
        self.worker = subprocess.Popen([sys.executable, "-m", "worker", *args], stdout=self._worker_log,
                                       stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.worker.poll() is not None:
                raise DemoError(f"the worker exited ({self.worker.returncode}):\n{tail(log_path)}")
            with suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    say(f"worker ready; metrics on http://127.0.0.1:{port}/metrics")
                    return
            time.sleep(0.2)
        raise DemoError(f"the worker was not ready within 60s:\n{tail(log_path)}")

    def simulate_and_follow(self) -> dict[str, Any]:
        args = ["simulate", "--bootstrap", self.bootstrap, "--topic-prefix", self.prefix,
                "--generator", "sea", "--concepts", "0,2", "--drift-at", "50%", "--events", str(self.events),
                "--rate", f"{self.rate:g}", "--labels", "topic", "--label-delay", "100", "--entities", "1000",
                "--seed", "7", "--id-prefix", "demo-", *([] if sys.stderr.isatty() else ["--no-progress"])]
        say(f"$ worker {shlex.join(args)}")
        self.simulator = subprocess.Popen([sys.executable, "-m", "worker", *args], stdout=subprocess.PIPE,
                                          env=self.env, text=True)
        began = time.monotonic()
        status: dict[str, Any] = {}
        poller = StatusPoller(self.settings(), self.secret.encode())
        deadline = began + self.timeout_s
        sent: dict[str, Any] | None = None
        shown = 0
        with click.progressbar(length=self.events, label="worker  ", file=sys.stderr,
                               hidden=not sys.stderr.isatty()) as bar:  # else a stray label in a log
            while True:
                if sent is None and self.simulator.poll() is not None:
                    out = self.simulator.stdout.read()
                    if self.simulator.returncode != 0:
                        raise DemoError(f"the simulator failed ({self.simulator.returncode}): {out}")
                    sent = json.loads(out.strip().splitlines()[-1])
                if self.worker.poll() is not None:
                    raise DemoError(f"the worker exited ({self.worker.returncode}):\n"
                                    f"{tail(self.out / 'worker.log')}")
                poller.ask()
                status = poller.read(POLL_S) or status
                counts = status.get("counts", {})
                if counts.get("events", 0) > shown:
                    bar.update(counts["events"] - shown)
                    shown = counts["events"]
                if sent is not None and counts.get("events") == sent["events"] \
                        and counts.get("labelled") == sent["labels"]:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"the worker did not process everything within {self.timeout_s:g}s "
                                    f"(status: {counts}); see {self.out / 'worker.log'}")
        poller.close()
        seconds = time.monotonic() - began
        rate = sent["events"] / seconds
        say(f"the worker scored {sent['events']} events and joined {sent['labels']} labels "
            f"{seconds:.1f}s after the simulator started (~{rate:.0f} events/s, end to end)")
        return {**sent, "worker_seconds": seconds, "status": status}

    def stop_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                code = self.worker.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)
                code = self.worker.wait(10)
            self._worker_log.close()
            say(f"worker stopped (SIGTERM, exit code {code})")

    def summary(self, sent: dict[str, Any], predictions: int, metrics: dict[str, float],
                report: Path) -> None:
        from worker.obs.report_control import load_control
        from worker.obs.report_kafka import read_control

        settings = self.settings()
        data = load_control(read_control(settings.admin_config(), settings.topics.control))
        status = sent["status"]
        counts = status["counts"]
        models = status["models"]
        lines = [
            "",
            f"topics:      {self.prefix}* on {self.bootstrap}",
            f"events:      {sent['events']} sent, {counts['events']} scored, {counts['labelled']} labelled "
            f"(delayed labels), {predictions} predictions committed, {counts['bad']} refused",
            f"stream:      SEA, abrupt concept drift (threshold 8 → 7) at event {self.events // 2}",
            f"throughput:  simulator {sent.get('events_per_s') or 0:.0f} events/s; the worker had processed "
            f"everything {sent['worker_seconds']:.1f}s after the simulator started",
            f"served:      accuracy {status['served']['cumulative']['accuracy']:.4f}, "
            f"F1 {status['served']['cumulative']['f1']:.4f} (prequential, cumulative)",
        ]
        for role in ("champion", "challenger"):
            model = models.get(role)
            if model:
                window = model["metrics"]["window"]
                lines.append(f"{role + ':':<12} v{model['version']}  accuracy {window['accuracy']:.4f}, "
                             f"F1 {window['f1']:.4f} (last {window['n']:.0f} labels)")
        lines.append("versions:")
        for v in data.versions:
            parent = f"from v{v['parent']}" if v.get("parent") else "-"
            lines.append(f"  v{v['version']:<3} {v.get('role', ''):<16} {parent:<8} {v.get('reason') or ''}")
        if metrics:
            lines.append("metrics:     " + ", ".join(f"{k} {v:g}" for k, v in metrics.items()))
        lines += [f"promotions: {counts['promotions']}", f"rollbacks: {counts['rollbacks']}",
                  f"report: {report}"]
        click.echo("\n".join(lines))

    # --- helpers -------------------------------------------------------------------------

    def settings(self):
        from worker.settings import KafkaSettings

        return KafkaSettings(bootstrap=self.bootstrap, group="demo", topic_prefix=self.prefix)

    def cli(self, *args: str, quiet: bool = False) -> str:
        shown = shlex.join(args).replace(self.secret, "***")
        say(f"$ worker {shown}")
        result = subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True, text=True,
                                env=self.env, timeout=120)
        if result.returncode != 0:
            raise DemoError(f"`worker {shown}` failed ({result.returncode}):\n{result.stderr}{result.stdout}")
        if not quiet:
            click.echo(result.stdout, nl=False, err=True)
        return result.stdout

    def kafka_local(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess:
        """Run scripts/kafka-local; uncaptured output goes to stderr (stdout is the summary's)."""
        if capture:
            return subprocess.run([sys.executable, str(KAFKA_LOCAL), *args], capture_output=True, text=True)
        sys.stdout.flush()
        return subprocess.run([sys.executable, str(KAFKA_LOCAL), *args], stdout=sys.stderr, text=True)

    def cleanup(self) -> None:
        """Stop what the demo started, and only that."""
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.send_signal(signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                self.simulator.wait(30)
        if self.worker is not None and self.worker.poll() is None:
            self.stop_worker()
        if self.started_kafka:
            say("stopping the local Kafka this demo started")
            self.kafka_local("stop", "--port", str(self.kafka_port), capture=False)


class StatusPoller:
    """Writes `status` commands on the control topic and reads the worker's answers,
    without waiting for each (one producer and one reader for the whole demo)."""

    def __init__(self, settings: Any, secret: bytes) -> None:
        from confluent_kafka import OFFSET_END, TopicPartition

        from worker.io import kafka

        self.topic = settings.topics.control
        self.secret = secret
        self.producer = kafka.producer({**settings.admin_config(), "enable.idempotence": True, "acks": "all",
                                        "linger.ms": 0})
        self.reader = kafka.reader({**settings.admin_config(), "group.id": "demo-status",
                                    "isolation.level": "read_committed"})
        self.reader.assign([TopicPartition(self.topic, 0, OFFSET_END)])

    def ask(self) -> None:
        from worker.core.types import Command
        from worker.io.codec import encode_command

        command = Command(type="status", command_id=str(uuid.uuid4()), issued_by="demo", reason="progress",
                          ts=time.time())
        self.producer.produce(self.topic, value=encode_command(command, self.secret))
        self.producer.poll(0)

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        """The newest status report that came within ``timeout_s``, if any."""
        import orjson

        latest = None
        for msg in self.reader.consume(num_messages=1000, timeout=timeout_s):
            if msg.error():
                continue
            with suppress(orjson.JSONDecodeError):
                obj = orjson.loads(msg.value())
                if isinstance(obj, dict) and obj.get("type") == "status_report":
                    latest = obj["detail"]
        return latest

    def close(self) -> None:
        self.producer.flush(10)
        self.reader.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def count_committed(consumer_config: dict[str, Any], topic: str) -> int:
    """Messages a read_committed consumer sees on every partition of ``topic``."""
    from worker.io import kafka

    reader = kafka.reader({**consumer_config, "group.id": "demo-count"})
    try:
        partitions = kafka.partitions_of(reader, topic)
        return sum(1 for p in partitions for _ in kafka.read_range(reader, topic, p, 0))
    finally:
        reader.close()


def scrape(port: int) -> dict[str, float]:
    """A few of the worker's Prometheus metrics (summed over their labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = ("worker_events_total", "worker_promotions_total", "worker_rollbacks_total",
              "worker_drift_alarms_total", "worker_dead_letters_total", "worker_labels_joined_total")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return {name: totals[name] for name in wanted if name in totals}


if __name__ == "__main__":
    sys.exit(main())

"""Champions on the `models` topic (ARCHITECTURE.md §2), against a real broker: the
worker publishes version 1 when its warm-up ends and every promoted version, and
`worker models list` / `worker models export` read them back; a secret rotation."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import Counter

import orjson

from tests.integration.harness import (
    SECRET,
    create_all_topics,
    event,
    json_values,
    produce,
    read_all,
    wait_until,
)
from tests.integration.test_worker_io import control, run_briefly, running, the_one_error_line, wait_predicted


def models_cli(bootstrap: str, prefix: str, *args: str) -> tuple[int, str, str]:
    """`worker models …`: (exit code, stdout, stderr)."""
    out = subprocess.run([sys.executable, "-m", "worker", "models", *args, "--bootstrap", bootstrap,
                          "--topic-prefix", prefix], capture_output=True, text=True, timeout=90)
    return out.returncode, out.stdout, out.stderr


def published(bootstrap: str, prefix: str) -> list[dict]:
    code, stdout, stderr = models_cli(bootstrap, prefix, "list")
    assert code == 0, stderr
    return [orjson.loads(line) for line in stdout.splitlines()]


def versions(bootstrap: str, prefix: str) -> list[int]:
    return [m["version"] for m in published(bootstrap, prefix)]


def test_champions_are_published_and_an_export_serves_exactly_like_the_worker(bootstrap, unique, tmp_path):
    prefix = unique("models") + "."
    create_all_topics(bootstrap, prefix, 2)
    with running(bootstrap, prefix, tmp_path / "worker.log", "--policy", "manual",
                 "--warmup-labels", "100"):
        assert versions(bootstrap, prefix) == [], "nothing before the warm-up ends"
        produce(bootstrap, prefix + "events", [event(i) for i in range(300)])
        wait_until(lambda: versions(bootstrap, prefix) == [1], 60, "v1 published when its warm-up ended")
        code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", "1")
        assert code == 0, (lines, stderr)
        wait_until(lambda: versions(bootstrap, prefix) == [1, 2], 60, "v2 published when promoted")
        produce(bootstrap, prefix + "events", [event(i) for i in range(300, 400)])
        wait_until(lambda: sum(p["model_version"] == 2 for p in
                               json_values(read_all(bootstrap, prefix + "predictions"))) == 100,
                   60, "100 predictions served by v2")

    v1, v2 = published(bootstrap, prefix)
    assert v1["reason"] == "initial champion" and v1["parent"] is None
    assert v1["published_labelled"] == 100, v1  # frozen right after its 100 warm-up labels
    assert v2["parent"] == 1 and v2["reason"].startswith("copy"), v2
    assert v2["chunks"] >= 1 and v2["bytes"] > 0

    # the exported v2 scores every event exactly as the worker served it
    out = tmp_path / "v2.pkl"
    code, stdout, stderr = models_cli(bootstrap, prefix, "export", "2", "--secret", SECRET, "--out", str(out))
    assert code == 0, stderr
    assert orjson.loads(stdout)["version"] == 2
    model = pickle.loads(out.read_bytes())
    features = {f"e{i}": orjson.loads(event(i)[1])["features"] for i in range(300, 400)}
    served = [p for p in json_values(read_all(bootstrap, prefix + "predictions")) if p["model_version"] == 2]
    assert {p["id"] for p in served} == set(features)
    for p in served:
        proba = model.predict_proba_one(features[p["id"]])
        assert proba == {False: p["proba"]["false"], True: p["proba"]["true"]}, (p, proba)

    # a restart publishes the champion again under the same keys: still one entry per version
    with running(bootstrap, prefix, tmp_path / "restarted.log", "--policy", "manual"):
        pass
    assert versions(bootstrap, prefix) == [1, 2]


def test_export_refuses_an_unpublished_version_and_another_secret(bootstrap, unique, tmp_path):
    prefix = unique("models-bad") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "worker.log", "--warmup-labels", "50"):
        produce(bootstrap, prefix + "events", [event(i) for i in range(60)])
        wait_until(lambda: versions(bootstrap, prefix) == [1], 60, "v1 published")
    out = tmp_path / "model.pkl"
    code, _, stderr = models_cli(bootstrap, prefix, "export", "9", "--secret", SECRET, "--out", str(out))
    assert code == 1 and "version 9 is not on the models topic (published: 1)" in stderr, stderr
    code, _, stderr = models_cli(bootstrap, prefix, "export", "1", "--secret", "wrong", "--out", str(out))
    assert code == 1 and "signature mismatch" in stderr, stderr
    assert not out.exists(), "nothing is written unless the model is genuine"
    code, _, stderr = models_cli(bootstrap, unique("no-such") + ".", "list")
    assert code == 2 and "missing topic" in stderr, stderr


def test_the_models_topic_is_read_committed_only(bootstrap, unique):
    """An aborted publication (a crash mid-transaction) is invisible to `worker models`."""
    from confluent_kafka import Producer

    from worker.core.registry import ModelVersion
    from worker.io.models import model_messages

    prefix = unique("models-txn") + "."
    create_all_topics(bootstrap, prefix, 1)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": prefix + "txn"})
    producer.init_transactions(30)
    for version, commit in ((1, True), (2, False)):
        mv = ModelVersion(version, "dummy.NoChangeClassifier", None, "test", 0, None, {"v": version})
        producer.begin_transaction()
        for key, value in model_messages(mv, SECRET.encode(), chunk_bytes=100, published_labelled=0):
            producer.produce(prefix + "models", key=key, value=value)
        producer.flush(30)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
    assert versions(bootstrap, prefix) == [1]


def test_a_rollback_reaches_a_champion_the_worker_no_longer_keeps(bootstrap, unique, tmp_path):
    """With retain_versions = 1, v1 leaves the worker's memory after three promotions; a
    rollback to it reads it back from `models`, and it serves exactly as it did."""
    prefix = unique("models-back") + "."
    create_all_topics(bootstrap, prefix, 2)
    config = tmp_path / "worker.toml"
    config.write_text('[engine]\npolicy = "manual"\nwarmup_labels = 100\nretain_versions = 1\n')
    with running(bootstrap, prefix, tmp_path / "worker.log", "--config", str(config)):
        produce(bootstrap, prefix + "events", [event(i) for i in range(300)])
        wait_until(lambda: versions(bootstrap, prefix) == [1], 60, "v1 published")
        for champion in (1, 2, 3):
            code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", str(champion))
            assert code == 0, (lines, stderr)
        code, lines, stderr = control(bootstrap, prefix, "rollback", "--to-version", "1")
        assert code == 0, (lines, stderr)
        rolled = [line for line in lines if line["type"] == "rolled_back"]
        assert rolled and rolled[0]["detail"]["to_version"] == 1, lines
        produce(bootstrap, prefix + "events", [event(i) for i in range(300, 400)])
        wait_until(lambda: len(read_all(bootstrap, prefix + "predictions")) >= 400, 60, "400 predictions")

    out = tmp_path / "v1.pkl"
    code, _, stderr = models_cli(bootstrap, prefix, "export", "1", "--secret", SECRET, "--out", str(out))
    assert code == 0, stderr
    v1 = pickle.loads(out.read_bytes())
    later = {f"e{i}": orjson.loads(event(i)[1])["features"] for i in range(300, 400)}
    served = [p for p in json_values(read_all(bootstrap, prefix + "predictions")) if p["id"] in later]
    assert len(served) == 100 and {p["model_version"] for p in served} == {1}
    for p in served:
        assert v1.predict_proba_one(later[p["id"]]) == {False: p["proba"]["false"], True: p["proba"]["true"]}


def test_old_champions_are_pruned_from_the_topic_and_stay_pruned(bootstrap, unique, tmp_path):
    """--models-retain 2: after three promotions only v3 and v4 stay on `models` (v1 and v2
    get tombstones); a rollback to v1, which is neither in memory nor on the topic any
    more, is rejected saying so; a restarted worker publishes no pruned version again;
    one restarted with --fresh prunes the old lineage before it publishes its own v1, and
    says on control that v1 is the champion now."""
    prefix = unique("models-prune") + "."
    create_all_topics(bootstrap, prefix, 2)
    config = tmp_path / "worker.toml"
    config.write_text('[engine]\npolicy = "manual"\nwarmup_labels = 100\nretain_versions = 1\n')
    args = ("--config", str(config), "--models-retain", "2")
    with running(bootstrap, prefix, tmp_path / "worker.log", *args):
        produce(bootstrap, prefix + "events", [event(i) for i in range(300)])
        wait_until(lambda: versions(bootstrap, prefix) == [1], 60, "v1 published")
        for champion in (1, 2, 3):
            code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", str(champion))
            assert code == 0, (lines, stderr)
        assert versions(bootstrap, prefix) == [3, 4]
        code, lines, _ = control(bootstrap, prefix, "rollback", "--to-version", "1")
        assert code == 1
        [rejected] = [line for line in lines if line["type"] == "command_rejected"]
        assert "version 1 was pruned from the models topic" in rejected["detail"]["reason"], rejected

    def latest_values() -> dict[str, bytes | None]:
        return {msg.key().decode(): msg.value() for msg in read_all(bootstrap, prefix + "models")}

    latest = latest_values()
    assert {key for key, value in latest.items() if value is None} == {"v1", "v1/0", "v2", "v2/0"}
    assert {key for key, value in latest.items() if value is not None} == {"v3", "v3/0", "v4", "v4/0"}
    written = len(read_all(bootstrap, prefix + "models"))

    with running(bootstrap, prefix, tmp_path / "worker-2.log", *args):
        produce(bootstrap, prefix + "events", [event(i) for i in range(300, 400)])
        wait_until(lambda: len(read_all(bootstrap, prefix + "predictions")) >= 400, 60, "400 predictions")
    assert versions(bootstrap, prefix) == [3, 4]
    assert len(read_all(bootstrap, prefix + "models")) == written, "the restart wrote nothing to models"

    with running(bootstrap, prefix, tmp_path / "worker-3.log", *args, "--fresh") as fresh:
        pruning = "pruning the 2 versions of the previous engine"
        wait_until(lambda: pruning in fresh.log(), 30, "pruning logged")
        fresh.wait_ready()  # control names the new engine's champion at once: scorers follow its last word

        def last_lifecycle() -> tuple[str, int]:
            lifecycle = [m for m in json_values(read_all(bootstrap, prefix + "control")) if "champion" in m]
            return lifecycle[-1]["type"], lifecycle[-1]["champion"]

        assert last_lifecycle() == ("status_report", 1)
        produce(bootstrap, prefix + "events", [event(i) for i in range(400, 600)])
        wait_until(lambda: versions(bootstrap, prefix) == [1], 60, "the new v1 published")
    latest = latest_values()
    assert {key for key, value in latest.items() if value is not None} == {"v1", "v1/0"}
    [manifest] = published(bootstrap, prefix)
    assert manifest["created_labelled"] == 0 and manifest["published_labelled"] >= 100, manifest


def test_a_secret_rotation_keeps_the_state_the_models_and_the_operators_commands(bootstrap, unique, tmp_path):
    """Restarted with a new --secret and the old one as --previous-secret, the worker
    restores its engine, accepts commands and models signed with either, and signs its
    new snapshot with the new secret only: the next restart needs no previous secret."""
    prefix = unique("rotate") + "."
    create_all_topics(bootstrap, prefix, 1)
    with running(bootstrap, prefix, tmp_path / "old.log", "--warmup-labels", "50", "--policy", "manual"):
        produce(bootstrap, prefix + "events", [event(i) for i in range(100)])
        wait_predicted(bootstrap, prefix, 100)
        code, lines, stderr = control(bootstrap, prefix, "promote", "--expected-champion", "1")
        assert code == 0, (lines, stderr)

    new = ("--secret", "new-secret", "--require-signed-commands")
    with running(bootstrap, prefix, tmp_path / "rotating.log", *new, "--previous-secret", SECRET) as worker:
        assert "restored engine: champion v2" in worker.log()
        produce(bootstrap, prefix + "events", [event(i) for i in range(100, 200)])
        assert Counter(wait_predicted(bootstrap, prefix, 200)) == Counter(f"e{i}" for i in range(200))
        for secret in (SECRET, "new-secret"):  # an operator still on the old secret, and one on the new
            code, lines, stderr = control(bootstrap, prefix, "status", secret=secret)
            assert code == 0 and lines[-1]["type"] == "command_applied", (secret, lines, stderr)
        code, lines, _ = control(bootstrap, prefix, "status", secret="a-third-secret")
        assert code == 1 and lines[-1]["type"] == "command_rejected", lines

    with running(bootstrap, prefix, tmp_path / "new.log", *new) as worker:
        assert "restored engine: champion v2" in worker.log(), "the last snapshot is signed with the new one"
    code, stderr, _ = run_briefly("--bootstrap", bootstrap, "--topic-prefix", prefix,
                                  "--group", prefix + "group", "--secret", "a-third-secret")
    line = the_one_error_line(stderr)
    assert code == 2 and "signed with another secret" in line and "--previous-secret" in line, line

    out = tmp_path / "v2.pkl"
    code, _, stderr = models_cli(bootstrap, prefix, "export", "2", "--secret", "new-secret",
                                 "--out", str(out))
    assert code == 1 and "signature mismatch" in stderr, "v2 was published under the old secret"
    code, _, stderr = models_cli(bootstrap, prefix, "export", "2", "--secret", "new-secret",
                                 "--previous-secret", SECRET, "--out", str(out))
    assert code == 0 and out.exists(), stderr

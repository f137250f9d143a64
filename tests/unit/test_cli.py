import subprocess
import sys

from worker import __version__


def test_python_m_worker_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "worker", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert __version__ in out.stdout


def worker_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=60)


def test_mistakes_in_options_are_one_usage_line_and_exit_2():
    for args in (("run", "--log-level", "verbose"), ("control", "pause", "--wait", "-1")):
        out = worker_cli(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "Invalid value for '--" in out.stderr, out.stderr


def test_an_output_path_under_a_file_is_one_clear_line(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "e1", "features": {"x": 1.0}, "label": true}\n')
    afile = tmp_path / "afile"
    afile.write_text("")
    out = worker_cli("replay", str(events), "--out", str(afile / "sub"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"worker: {afile / 'sub'}: a part of that path is a file, not a folder"


def test_who_issued_a_command_comes_from_worker_issued_by_first():
    import os

    from click.testing import CliRunner

    from worker.cli import cli

    command = cli.commands["control"].commands["pause"]
    env = {k: None for k in os.environ if k.startswith("WORKER_")}
    for extra, expected in (({"WORKER_ISSUED_BY": "carol", "USER": "bob"}, "carol"),
                            ({"USER": "bob"}, "bob")):
        with CliRunner(env={**env, **extra}).isolation():
            context = command.make_context("pause", [])  # parses the options, sends nothing
        assert context.params["issued_by"] == expected


def test_client_commands_take_the_deployments_file_and_flags_win(tmp_path):
    """`worker control|topics|models|simulate|report --config worker.toml`: the [run]
    table's connection (and secret) apply unless a flag says otherwise."""
    import pytest

    from worker.cli import connection, file_secret
    from worker.errors import ConfigError

    config = tmp_path / "worker.toml"
    config.write_text('[run]\nbootstrap = "kafka-1:9093"\ntopic_prefix = "shop."\nsecret = "s3cret"\n'
                      '[run.kafka]\n"security.protocol" = "SASL_SSL"\n')
    from_file = connection(str(config), None, None, (), "g")
    assert (from_file.bootstrap, from_file.topics.control) == ("kafka-1:9093", "shop.control")
    assert from_file.admin_config()["security.protocol"] == "SASL_SSL"
    assert file_secret(str(config), None) == "s3cret"
    flags = connection(str(config), "kafka-2:9092", "", ("security.protocol=SSL",), "g")
    assert (flags.bootstrap, flags.topics.control) == ("kafka-2:9092", "control")
    assert flags.admin_config()["security.protocol"] == "SSL"
    assert file_secret(str(config), "other") == "other"
    assert connection(None, None, None, (), "g").bootstrap == "127.0.0.1:9092"
    config.write_text('[run]\nbootstap = "typo:9092"\n')
    with pytest.raises(ConfigError, match="bootstap"):
        connection(str(config), None, None, (), "g")

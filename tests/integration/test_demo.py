"""The demo's orchestration (worker/demo.py, what scripts/demo runs) on the real broker,
on a shorter stream: worker, simulator, status polling, `worker report --bootstrap`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

EVENTS = 12_000


def test_demo_end_to_end(bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKER_")}
    env["WORKER_BOOTSTRAP"] = bootstrap
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "worker.demo", "--events", str(EVENTS), "--rate", "4000",
                             "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.strip().splitlines()
    report = (out / "report.html").resolve()
    assert re.fullmatch(r"promotions: \d+", lines[-3]) and re.fullmatch(r"rollbacks: \d+", lines[-2])
    assert lines[-1] == f"report: {report}"
    promotions = int(lines[-3].split()[1])
    assert promotions >= 1, result.stdout
    assert f"{EVENTS} sent, {EVENTS} scored, {EVENTS} labelled" in result.stdout
    assert f"{EVENTS} predictions committed" in result.stdout  # exactly once, read_committed
    assert "worker stopped (SIGTERM, exit code 0)" in result.stderr
    assert not {"worker", "events"} & {line.strip() for line in result.stderr.splitlines()}, \
        "no stray progress-bar labels when stderr is not a terminal"

    page = report.read_text()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S).group(1))
    assert data["summary"]["events"] == EVENTS and data["summary"]["promotions"] == promotions
    assert len(data["points"]) >= 5  # the demo's status polling gives the timeline
    assert any(m["type"] == "promoted" for m in data["markers"])
    assert (out / "report.png").stat().st_size > 10_000
    assert '"message": "stopped cleanly"' in (out / "worker.log").read_text()

"""The chaos script, short: load through the facade of `npu-worker up` while three workers are killed
(kill -9) and Redis stops for 10 s. Nothing may be lost or hang; recovery is measured.

The script starts its own redis-server on a free port; the machine's Redis is never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_chaos_short_run_loses_nothing(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    run = subprocess.run([sys.executable, "-m", "scripts.chaos", "--duration", "30", "--gap", "2",
                          "--concurrency", "4", "--json", str(report)], cwd=ROOT, capture_output=True, text=True,
                         timeout=280)
    tail = run.stdout[-3000:]
    print(tail)
    assert run.returncode == 0, tail + run.stderr[-3000:]
    s = json.loads(report.read_text())
    assert s["lost"] == 0 and s["hung"] == 0 and s["unexpected_exits"] == []
    assert s["answered_npu"] > 100 and s["answered_cloud"] > 0
    # Every error is a clear, expected one for callers that refuse the cloud: Redis gone; no live worker yet
    # in the instant after Redis returned (heartbeats expired meanwhile); a streamed generation whose
    # worker died after it had sent text.
    assert {code.split()[1] for code in s["errors_by_code"]} <= {"redis_unavailable", "unavailable", "worker_lost"}
    assert s["errors_by_code"].get("503 unavailable", 0) < 20, s["errors_by_code"]
    assert len(s["kills"]) == 3 and all(k["replacement_live_s"] and k["replacement_live_s"] < 60 for k in s["kills"])
    assert all(k["in_flight_slowest_s"] < 15 for k in s["kills"])  # taken over, not left to the deadline
    assert s["redis_outage"]["first_npu_200_after_s"] <= 2.0
    assert s["bulk"]["submitted"] > 10 and s["bulk"].get("lost", 0) == 0

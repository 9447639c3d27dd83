"""The compose file: valid, a healthcheck and a restart policy on every service, the state dir on a named
volume, probes that exist; and a `.dockerignore` that keeps the virtualenv out of the build context."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), name
        assert service.get("restart") == "unless-stopped", name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["worker"]["healthcheck"]["test"][1:3] == ["npu-worker", "alive"]
    for name in ("api", "worker"):
        assert "npu-state:/var/lib/npu-worker" in services[name]["volumes"]
    assert "npu-state" in compose["volumes"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "NPU_STATE_DIR=/var/lib/npu-worker" in dockerfile


def test_compose_config_validates() -> None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and subprocess.run([*command, "version"], capture_output=True,
                                                       timeout=60).returncode == 0:
            out = subprocess.run([*command, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return
    pytest.skip("neither `docker compose` nor `docker-compose` is installed")


def test_dockerignore_keeps_the_venv_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)

"""Every fenced snippet of the README and of docs/*.md is run (or parsed) here, so the documents stay true.

Snippets run as written, from the checkout's root, against this session's worker and a facade of their
own, with three stated substitutions: `localhost:8081` is the test facade's address, `<token>` its admin
token, and `HOME` is a temporary directory whose `~/.local/share/npu-worker` holds `credentials.json` (this
session's service key and admin token) and `redis.url` (the test Redis), as `npu-worker up` leaves them.
`NPU_KEY_PREFIX` is the session's, so nothing meets a real deployment's keys. A snippet that cannot run in
a test (it starts a whole stack, or downloads from a model hub) is listed in `NOT_RUN` with why; a new
snippet must be handled one way or the other, or this test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
import yaml

from dispatcher.settings import Settings
from tests.conftest import ADMIN_TOKEN, APP_KEY, ROOT, SERVICE_ID, SERVICE_KEY, LiveFacade, WorkerProcess

BILLING_KEY = "the-billing-key"
"""The key of the README's curl + openssl example's service `billing`."""

NOT_RUN = {
    "scripts/run     #": "installs and starts a whole stack; tests/e2e/test_up.py runs `npu-worker up`",
    ".venv/bin/python -m scripts.chaos": "1.5-10 minutes; tests/e2e/test_chaos.py runs a 30 s version",
    ".venv/bin/pip install 'npu-worker[export]'": "downloads 1.6 GB and a model from a hub",
    "npu-worker up [--host H]": "a synopsis of the commands, not a script; tests/e2e/test_cli.py runs them",
    "REST caller --HTTP-->": "a diagram",
    "flowchart LR": "a diagram (mermaid)",
    "OpenVINO 2026": "output of `npu-worker devices`; tests/worker/test_compile_cache.py runs the command",
    "npu-worker export Qwen/": "downloads models from a hub; tests/worker/test_export.py runs `export --for npu`",
    "from redis.sentinel import Sentinel": "needs a Sentinel deployment at the documented hosts; "
                                           "tests/dispatcher/test_sentinel.py runs clients and rq against real ones",
}


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
"""Where snippets live: the README (the landing page) and the documents by reader it links to."""


def snippets() -> Iterator[tuple[str, str, str]]:
    """(where, language, text) of each fenced block; `where` is `file:line`."""
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("```"):
                lang, start = lines[i][3:].strip(), i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
                yield f"{document.relative_to(ROOT)}:{start}", lang, "\n".join(lines[start:end])
                i = end
            i += 1


@pytest.fixture(scope="module")
def stack(settings: Settings, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("home")
    state = home / ".local" / "share" / "npu-worker"
    state.mkdir(parents=True)
    (state / "credentials.json").write_text(json.dumps({"service_id": SERVICE_ID, "service_key": SERVICE_KEY,
                                                        "admin_token": ADMIN_TOKEN}))
    (state / "redis.url").write_text(settings.redis_address + "\n")
    live = LiveFacade(settings.model_copy(update={"service_keys": {SERVICE_ID: SERVICE_KEY, "billing": BILLING_KEY}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPU_") and k != "REDIS_URL"}
    env.update({"HOME": str(home), "PYTHONPATH": str(ROOT), "NPU_KEY_PREFIX": settings.key_prefix,
                "NPU_PORT": str(live.url.rsplit(":", 1)[1]), "NPU_SERVICE_ID": SERVICE_ID,
                "NPU_SERVICE_KEY": SERVICE_KEY, "NPU_LOG_LEVEL": "WARNING",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    yield {"env": env, "url": live.url, "home": home}
    live.stop()


def substitute(text: str, url: str) -> str:
    return (text.replace("http://localhost:8081", url).replace("localhost:8081", url)
            .replace("<token>", ADMIN_TOKEN).replace("<app key>", APP_KEY))


HOSTS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|https?://(?!127\.|localhost\b)[a-z]")
"""An address a snippet could reach outside this machine (an IPv4 literal, or a URL host other than the loopback)."""


def run(lang: str, text: str, stack: dict) -> subprocess.CompletedProcess[str]:
    code = substitute(text, stack["url"])
    outside = [m.group(0) for m in HOSTS.finditer(code) if not m.group(0).startswith("127.")]
    assert not outside, f"a snippet run by the tests would reach {outside}: list it in NOT_RUN or use the loopback"
    args = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(args, env=stack["env"], cwd=ROOT, capture_output=True, text=True, timeout=180)


def test_every_snippet_is_handled() -> None:
    found = list(snippets())
    assert {where.split(":")[0] for where, _, _ in found} >= {"README.md", "docs/http-api.md", "docs/python-api.md",
                                                              "docs/operating.md"}
    for where, lang, text in found:
        skipped = any(text.lstrip().startswith(k) for k in NOT_RUN)
        assert skipped or lang in ("python", "sh", "toml", "yaml"), f"{where}: unhandled {lang!r} snippet"


@pytest.mark.parametrize(("where", "lang", "text"), [pytest.param(*s, id=s[0]) for s in snippets()
                                                     if not any(s[2].lstrip().startswith(k) for k in NOT_RUN)])
def test_snippet_runs(where: str, lang: str, text: str, stack: dict) -> None:
    if lang == "toml":
        assert tomllib.loads(text)
        return
    if lang == "yaml":
        assert all(doc["kind"] for doc in yaml.safe_load_all(text))
        return
    out = run(lang, text, stack)
    assert out.returncode == 0, f"{where}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr and not re.search(r'"error"\s*:', out.stdout), out.stdout[-2000:]

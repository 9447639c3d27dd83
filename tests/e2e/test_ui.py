"""The operator page in headless Chromium (Debian's, driven by Playwright) against live facades and a real
worker: sign-in, the stats row against the API, role assignment through the modal, unloading a model from
the details panel, what a viewer may press, the old settings URL, the error and empty states, and what the
page shows 420 px wide.

Everything runs under a key prefix of this module's own, so the fleet the page shows is exactly this
module's: one worker process (the embedding model only, quick to load), the facade the browser talks to,
and a second facade that stands for another node's address.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from dispatcher.fleet import iso
from dispatcher.protocol import Heartbeat, Keys, pack, utilization
from dispatcher.settings import Settings
from npu_worker.redis_server import free_port
from tests.conftest import ADMIN_TOKEN, VIEWER_TOKEN, LiveFacade, WorkerProcess, _cleanup

MODEL = "all-minilm-l6-v2"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WAIT_MS = 15_000
"""Longest wait for something the page shows after a poll (it polls every 2.5 s; workers apply a load or
unload on their next heartbeat)."""


@pytest.fixture(scope="module")
def ui_settings(settings: Settings, redis_url: str) -> Iterator[Settings]:
    prefix = f"{settings.key_prefix}ui{uuid.uuid4().hex[:4]}"
    yield settings.model_copy(update={"key_prefix": prefix, "node_id": f"{prefix}-node"})
    _cleanup(redis_url, prefix)


@pytest.fixture(scope="module")
def ui_worker(ui_settings: Settings) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(ui_settings, models=[MODEL], NPU_HEARTBEAT_INTERVAL_S="0.5")
    try:
        proc.wait_live()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def site(ui_settings: Settings, ui_worker: WorkerProcess) -> Iterator[LiveFacade]:
    live = LiveFacade(ui_settings)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def peer(ui_settings: Settings, ui_worker: WorkerProcess) -> Iterator[LiveFacade]:
    """Another node's facade: an address to register and detect, with no npu-worker role at first."""
    live = LiveFacade(ui_settings)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors  # no script error on any page a test visited


class API:
    """The same API the page reads, with the admin token, to compare against and to set up state."""

    def __init__(self, base_url: str):
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=20)

    def __call__(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code < 400, response.text
        return response.json() if response.content else None

    def npu_nodes(self) -> list[dict[str, Any]]:
        return self("GET", "/api/fleet/nodes", params={"role": "npu-worker"})["nodes"]


@pytest.fixture
def api(site: LiveFacade) -> Iterator[API]:
    client = API(site.url)
    yield client
    client.http.close()


def sign_in(page: Page, base: str, token: str, path: str = "/fleet") -> None:
    page.goto(base + path)
    page.fill("input[name=token]", token)
    page.click("[data-test=signin] button[type=submit]")
    expect(page.locator("[data-test=role]")).to_be_visible()


def card(page: Page, node_id: str) -> Any:
    return page.locator(f"[data-test=node-card][data-node='{node_id}']")


def wait_until(check: Any, timeout: float = WAIT_MS / 1000) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


# --- sign-in and the old URL


def test_old_settings_url_redirects_to_the_tab_and_sign_in_checks_the_token(page: Page, site: LiveFacade) -> None:
    response = httpx.get(site.url + "/settings/admin/npu-workers", follow_redirects=False)
    assert response.status_code == 308 and response.headers["location"] == "/fleet#npu-workers"
    page.goto(site.url + "/settings/admin/npu-workers")
    assert page.url == site.url + "/fleet#npu-workers"
    page.fill("input[name=token]", "not-a-token")
    page.click("[data-test=signin] button[type=submit]")
    expect(page.get_by_role("alert")).to_have_text("This token is not accepted.")
    assert page.evaluate("sessionStorage.length") == 0  # a refused token is not kept
    page.fill("input[name=token]", ADMIN_TOKEN)
    page.click("[data-test=signin] button[type=submit]")
    expect(page.locator("[data-test=npu-workers-tab]")).to_be_visible()
    expect(page.get_by_role("tab", name="NPU Workers")).to_have_attribute("aria-selected", "true")
    expect(page.locator("[data-test=role]")).to_have_text("admin")
    assert ADMIN_TOKEN not in page.url
    page.reload()  # the token lives in this tab's sessionStorage: a reload stays signed in
    expect(page.locator("[data-test=npu-workers-tab]")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("[data-test=signin]")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_sign_in_card_says_where_the_token_is(page: Page, site: LiveFacade, tmp_path: Path) -> None:
    for width in (1280, 420):
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(site.url + "/fleet")
        hint = page.locator("[data-test=signin] [data-test=token-hint]")
        expect(hint).to_be_visible()
        for said in ("npu-worker up", "credentials.json", "$NPU_STATE_DIR", "~/.local/share/npu-worker",
                     "NPU_ADMIN_TOKENS", "NPU_VIEWER_TOKENS"):
            expect(hint).to_contain_text(said)
        expect(hint.locator("pre")).to_have_text(
            'jq -r .admin_token "${NPU_STATE_DIR:-$HOME/.local/share/npu-worker}/credentials.json"')
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(path=tmp_path / f"signin-{width}.png")


# --- the NPU Workers tab against the API


def test_stats_row_matches_the_api(page: Page, site: LiveFacade, api: API, ui_settings: Settings) -> None:
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    expect(card(page, ui_settings.node_id)).to_be_visible()

    def shown_and_expected() -> tuple[tuple[str, ...], tuple[str, ...]]:
        shown = tuple(page.locator(f"[data-test=stat-{name}]").inner_text()
                      for name in ("nodes", "models", "utilization"))
        nodes = api.npu_nodes()
        online = [n for n in nodes if n["status"] == "online"]
        average = sum(n["utilization"] for n in online) / len(online)
        return shown, (str(len(nodes)), str(sum(len(n["loadedModels"]) for n in nodes)), f"{average:.1f}%")

    # Live values may move between the page's poll and this read: equal on one of a few tries.
    assert wait_until(lambda: len(set(shown_and_expected())) == 1), shown_and_expected()
    node = next(n for n in api.npu_nodes() if n["id"] == ui_settings.node_id)
    assert node["loadedModels"] == [MODEL]
    expect(card(page, ui_settings.node_id).locator("[data-test=model-count]")).to_have_text("1")
    expect(card(page, ui_settings.node_id).locator("[data-test=device]")).to_have_text(node["deviceType"])
    placed = node["placements"][MODEL]
    expect(card(page, ui_settings.node_id).locator("[data-test=placements]")).to_contain_text(
        f"{MODEL}: {placed['device']} · {placed['engine']}")


NPU_NODE = "npu-box"
"""A node with an NPU, known only by its worker's heartbeat (written by the test: this machine has no NPU).
It serves no registered model, so nothing is routed to it."""


class FakeBeat:
    """One worker heartbeat of NPU_NODE, written straight to Redis as a worker writes it, so a test sets its
    load exactly."""

    def __init__(self, settings: Settings):
        self.r = redis.Redis.from_url(settings.redis_url)
        self.keys = Keys(settings.key_prefix)
        self.worker_id = f"{NPU_NODE}-worker"

    def write(self, running: int, max_concurrent: int = 32) -> float:
        now = time.time()
        beat = Heartbeat(worker_id=self.worker_id, node_id=NPU_NODE, pid=1, started=now, at=now,
                         models={"npu-model": "intel-npu"}, devices={"npu-model": "NPU"},
                         max_concurrent=max_concurrent, memory_gb=16.0, queue_depth=0, queue_depths={},
                         running=running, utilization=utilization(0, running, max_concurrent), busy_fraction=0,
                         counters={})
        pipe = self.r.pipeline()
        pipe.set(self.keys.worker(self.worker_id), pack(beat), ex=120)
        pipe.zadd(self.keys.workers, {self.worker_id: now + 120})
        pipe.execute()
        return beat.utilization

    def remove(self) -> None:
        self.r.delete(self.keys.worker(self.worker_id))
        self.r.zrem(self.keys.workers, self.worker_id)
        self.r.close()


@pytest.fixture
def npu_beat(ui_settings: Settings, site: LiveFacade) -> Iterator[FakeBeat]:
    beat = FakeBeat(ui_settings)
    yield beat
    beat.remove()


def test_the_nodes_tile_counts_worker_nodes_and_npus_apart(page: Page, site: LiveFacade, api: API,
                                                            npu_beat: FakeBeat) -> None:
    """The npu-worker role runs on any device: the tile counts the role's nodes as worker nodes and says how
    many have an NPU (this module's own node is CPU-only)."""
    npu_beat.write(running=0)
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    expect(card(page, NPU_NODE).locator("[data-test=device]")).to_have_text("intel-npu")
    nodes = api.npu_nodes()
    devices = sorted(n["deviceType"] or "" for n in nodes)
    assert devices.count("intel-npu") == 1 and len(nodes) >= 2, devices  # a CPU-only node among them
    expect(page.locator("[data-test=stats] .stat .label").first).to_have_text("Worker nodes")
    expect(page.locator("[data-test=stat-nodes]")).to_have_text(str(len(nodes)))
    expect(page.locator("[data-test=stat-npus]")).to_have_text("1")


def test_the_details_panel_shows_the_cards_utilization(page: Page, site: LiveFacade, npu_beat: FakeBeat) -> None:
    """The card and the details panel read the node from one poll: a load that changes between the tab's poll
    and the panel's own read must not show as 100% on the card and 21.9% in the panel."""
    full = npu_beat.write(running=32)
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    npu_card = card(page, NPU_NODE)
    expect(npu_card.locator("[data-test=utilization]")).to_have_text(f"{full:.1f}% utilized")
    light = npu_beat.write(running=7)  # 21.9%: the next poll of the tab is up to 2.5 s away
    npu_card.locator("[data-test=details]").click()
    panel = page.locator(f"[data-test=details-panel][data-node='{NPU_NODE}']")
    expect(panel.locator(".tile", has_text="Utilization").locator("span").last).to_contain_text("%")
    shown = set()
    for _ in range(12):  # over more than one poll: the two always agree, first on 100%, then on 21.9%
        on_card, in_panel = page.evaluate("""(node) => [
            document.querySelector(`[data-test=node-card][data-node='${node}'] [data-test=utilization]`).textContent,
            [...document.querySelectorAll('[data-test=details-panel] .tile')]
              .find((t) => t.querySelector('.label').textContent === 'Utilization').lastElementChild.textContent]""",
                                          NPU_NODE)
        assert on_card.strip() == f"{in_panel.strip()} utilized", (on_card, in_panel)
        assert panel.locator("[data-test=queue]").inner_text() == "0"
        shown.add(in_panel.strip())
        page.wait_for_timeout(300)
    assert f"{light:.1f}%" in shown, shown


def test_assigning_the_role_through_the_modal_shows_the_node_with_detected_capabilities(
        page: Page, site: LiveFacade, peer: LiveFacade, api: API) -> None:
    sign_in(page, site.url, ADMIN_TOKEN)
    # Register the peer by address on the Nodes tab (no role yet)...
    form = page.locator("[data-test=add-node]")
    form.get_by_label("node name").fill("Peer node")
    form.get_by_label("address").fill(peer.url)
    form.get_by_role("button", name="Add node").click()
    expect(page.locator("[data-test=nodes-table] tr[data-node=peer-node]")).to_contain_text(peer.url)
    # ...then give it the role through the modal on the NPU Workers tab.
    page.get_by_role("tab", name="NPU Workers").click()
    expect(card(page, "peer-node")).to_have_count(0)
    page.click("[data-test=assign-role]")
    modal = page.locator("[data-test=assign-modal]")
    modal.get_by_label("Peer node").check()
    expect(modal.locator("[data-test=detection-status]")).to_have_text("Not detected yet.")
    modal.locator("[data-test=detect]").click()  # preview: detection without the role
    expect(modal.locator("[data-test=detection-status]")).to_contain_text("Detected")
    expect(modal.locator("[data-test=capabilities]")).to_contain_text(MODEL)
    assert "peer-node" not in [n["id"] for n in api.npu_nodes()]  # a preview assigns nothing
    modal.locator("[data-test=confirm-assign]").click()
    expect(modal).to_have_count(0)
    peer_card = card(page, "peer-node")
    expect(peer_card.locator("[data-test=device]")).to_have_text("cpu")
    expect(peer_card.locator("[data-test=capabilities]")).to_contain_text("detected: cpu")
    node = next(n for n in api.npu_nodes() if n["id"] == "peer-node")
    assert node["detection"]["status"] == "ok" and MODEL in node["capabilities"]["models"]
    expect(peer_card.locator("[data-test=capabilities]")).to_contain_text(
        f"{len(node['capabilities']['models'])} models, {node['capabilities']['maxConcurrent']} concurrent")
    expect(peer_card.locator("[data-test=capabilities]")).to_contain_text(
        f"host memory {node['capabilities']['memoryGB']:.1f} GB")
    expect(page.locator("[data-test=stat-nodes]")).to_have_text(str(len(api.npu_nodes())))


def test_unloading_a_model_in_the_details_panel_changes_the_card(page: Page, site: LiveFacade,
                                                                 ui_settings: Settings, api: API) -> None:
    node_id = ui_settings.node_id
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    node_card = card(page, node_id)
    expect(node_card.locator("[data-test=model-count]")).to_have_text("1")
    node_card.locator("[data-test=details]").click()
    panel = page.locator("[data-test=details-panel]")
    row = panel.locator(f"tr[data-model='{MODEL}']")
    expect(row.locator("[data-test=model-state]")).to_have_text("loaded")
    expect(panel.locator("[data-test=memory]")).to_contain_text("GB")
    # The worker's own RSS, from its heartbeat, next to the machine's memory.
    expect(panel.locator("[data-test=worker-memory]")).to_have_text(re.compile(r"^\d+\.\d\d GB$"))
    expect(panel.locator("[data-test=worker-memory]")).to_have_attribute("title", re.compile(r"\d+ MB"))
    row.locator("[data-test=unload]").click()
    try:
        expect(node_card.locator("[data-test=model-count]")).to_have_text("0", timeout=WAIT_MS)
        expect(node_card.locator("[data-test=loaded-models]")).to_contain_text("none loaded")
        expect(row.locator("[data-test=model-state]")).to_have_text("not loaded")
        assert next(n for n in api.npu_nodes() if n["id"] == node_id)["loadedModels"] == []
    finally:  # load it again (through the page), so the module's worker serves as before
        row.locator("[data-test=load]").click()
        expect(node_card.locator("[data-test=model-count]")).to_have_text("1", timeout=WAIT_MS)
    expect(row.locator("[data-test=model-state]")).to_have_text("loaded")


def test_load_balancing_form_shows_validation_errors_and_saves(page: Page, site: LiveFacade, api: API,
                                                               ui_settings: Settings) -> None:
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    form = page.locator("[data-test=load-balancing]")
    try:
        form.get_by_label("Model affinity").first.check()
        form.locator("[data-test=add-affinity]").click()
        affinity = form.locator("[data-test=affinity-row]")
        expect(affinity.get_by_label("model", exact=True)).to_have_value(MODEL)
        form.locator("[data-test=save-lb]").click()  # no node chosen: the page says so, nothing is sent
        expect(form.locator("[data-test=lb-errors]")).to_have_text(f"{MODEL}: choose at least one node.")
        affinity.locator(f"input[value='{ui_settings.node_id}']").check()
        affinity.get_by_label("model", exact=True).fill("no-such-model")
        form.locator("[data-test=save-lb]").click()  # the API refuses the unknown model: its message shows
        expect(form.locator("[data-test=lb-errors]")).to_contain_text("unknown model 'no-such-model'")
        assert api("GET", "/api/npu/load-balancing")["strategy"] == "least-loaded"
        affinity.get_by_label("model", exact=True).fill(MODEL)
        form.locator("[data-test=save-lb]").click()
        expect(form.locator("[data-test=lb-saved]")).to_be_visible()
        assert api("GET", "/api/npu/load-balancing") == {"strategy": "model-affinity",
                                                         "modelAffinity": {MODEL: [ui_settings.node_id]}}
    finally:
        api("POST", "/api/npu/load-balancing", json={"strategy": "least-loaded", "modelAffinity": {}})


def test_a_viewer_cannot_press_admin_controls(page: Page, site: LiveFacade, ui_settings: Settings) -> None:
    sign_in(page, site.url, VIEWER_TOKEN, "/fleet#npu-workers")
    expect(page.locator("[data-test=role]")).to_have_text("viewer")
    expect(page.locator("[data-test=viewer-note]")).to_be_visible()
    expect(page.locator("[data-test=assign-role]")).to_be_disabled()
    expect(page.locator("[data-test=refresh-all]")).to_be_enabled()  # re-reading is not a change
    node_card = card(page, ui_settings.node_id)
    expect(node_card.locator("[data-test=remove-role]")).to_be_disabled()
    node_card.locator("[data-test=details]").click()
    row = page.locator(f"[data-test=details-panel] tr[data-model='{MODEL}']")
    expect(row.locator("[data-test=unload]")).to_be_disabled()
    form = page.locator("[data-test=load-balancing]")
    expect(form.locator("[data-test=save-lb]")).to_be_disabled()
    expect(form.get_by_label("Round robin")).to_be_disabled()
    page.get_by_role("tab", name="Nodes").click()
    expect(page.locator("[data-test=add-node]").get_by_role("button", name="Add node")).to_be_disabled()
    # Pressing anyway does nothing (and the API would refuse a viewer: tests/api/test_auth.py).
    page.locator("[data-test=add-node]").get_by_role("button", name="Add node").click(force=True)
    expect(page.locator("[data-test=add-node] .error")).to_have_count(0)


# --- empty and error states


def test_a_failed_detection_is_shown_on_the_card(page: Page, site: LiveFacade, api: API) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    api("POST", "/api/fleet/nodes", json={"id": "dead-node", "name": "Dead node", "address": dead,
                                          "roles": ["npu-worker"]})
    try:
        sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
        dead_card = card(page, "dead-node")
        expect(dead_card.locator("[data-test=detection-error]")).to_contain_text("Detection failed")
        expect(dead_card.locator(".dot")).to_have_class("dot error")
        expect(dead_card.locator("[data-test=device]")).to_have_text("unknown device")
        before = next(n for n in api.npu_nodes() if n["id"] == "dead-node")["detection"]["at"]
        # Fleet times are written to the second: a detection run again within the same second as the first
        # would carry the same time, so click once the clock has moved on.
        assert wait_until(lambda: iso(time.time()) > before)
        page.click("[data-test=refresh-all]")  # an admin's Refresh All runs detection again on every NPU node
        assert wait_until(lambda: next(n for n in api.npu_nodes() if n["id"] == "dead-node")["detection"]["at"]
                          > before)
        expect(page.locator("[data-test=refresh-all]")).to_have_text("Refresh All")
        expect(dead_card.locator("[data-test=detection-error]")).to_contain_text("Detection failed")
    finally:
        api("DELETE", "/api/fleet/nodes/dead-node")


TOO_WIDE = """[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > 421)
  .slice(-6).map((e) => `${e.tagName}.${e.className} ${e.textContent.slice(0, 40)}`)"""


LINES = """(selector) => [...document.querySelectorAll(selector)].map((element) => {
  const range = document.createRange();
  range.selectNodeContents(element);
  const tops = [...range.getClientRects()].filter((r) => r.width > 0).map((r) => r.top).sort((a, b) => a - b);
  return [element.textContent.trim(), tops.filter((top, i) => i === 0 || top - tops[i - 1] > 8).length];
})"""
"""Each element's text and the number of lines it takes (its boxes' tops, those within 8 px as one)."""

HIDDEN_COLUMNS = """[...document.querySelectorAll('table')].filter((t) => t.scrollWidth > t.clientWidth + 1
  || t.scrollWidth > t.parentElement.clientWidth + 1
  || t.getBoundingClientRect().right > document.documentElement.clientWidth + 1).map((t) => t.dataset.test)"""
"""Tables wider than their box or the screen: columns cut off, or only seen by scrolling."""

UNSCROLLABLE = """[...document.querySelectorAll('table')].filter((t) => t.scrollWidth > t.parentElement.clientWidth + 1
  && !['auto', 'scroll'].includes(getComputedStyle(t.parentElement).overflowX)).map((t) => t.dataset.test)"""
"""Tables wider than their box that is not a scroll box: columns cut off."""


def on_screen(page: Page, selector: str) -> list[bool]:
    """Whether each element matching selector lies within the viewport's width, without scrolling sideways."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)].map((e) => {
      const box = e.getBoundingClientRect();
      return box.width > 0 && box.left >= 0 && box.right <= document.documentElement.clientWidth; })""", selector)


@pytest.mark.parametrize("width", [420, 760])
def test_narrow_the_page_does_not_scroll_sideways(page: Page, site: LiveFacade, ui_settings: Settings,
                                                  tmp_path: Path, width: int) -> None:
    """On a narrow screen nothing sticks out, tables reflow (one card per row: no column is cut off, every
    row's buttons are on the screen) and names (nodes, models) take one line each."""
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    card(page, ui_settings.node_id).locator("[data-test=details]").click()
    expect(page.locator(f"[data-test=details-panel] tr[data-model='{MODEL}']")).to_be_visible()
    names = {"NPU Workers": "[data-test=details-models] tbody td:first-child",
             "Nodes": "[data-test=models-table] tbody td:first-child, "
                      "[data-test=nodes-table] tbody td:first-child strong, [data-test=nodes-table] td:nth-child(7)"}
    buttons = {"NPU Workers": "[data-test=details-models] td.actions button, [data-test=node-card] button",
               "Nodes": "[data-test=nodes-table] td.actions button"}
    for tab in ("NPU Workers", "Nodes"):
        page.get_by_role("tab", name=tab).click()
        expect(page.locator(names[tab]).first).to_be_visible()
        wide = page.evaluate(TOO_WIDE.replace("421", str(width + 1)))  # what sticks out, for the failure message
        assert page.evaluate("document.documentElement.scrollWidth") <= width, (tab, wide)
        assert page.evaluate(UNSCROLLABLE) == [], tab
        assert page.evaluate(HIDDEN_COLUMNS) == [], tab
        shown = on_screen(page, buttons[tab])
        assert shown and all(shown), (tab, shown)
        lines = page.evaluate(LINES, names[tab])
        assert lines and all(n == 1 for _, n in lines), (tab, lines)
        page.screenshot(path=tmp_path / f"{tab.replace(' ', '-').lower()}-{width}.png", full_page=True)
    header = page.locator("header.top").bounding_box()
    role = page.locator("[data-test=role]").bounding_box()
    assert header and role and role["x"] + role["width"] <= width  # the header wraps rather than spill over


def duration(ms: float) -> str:
    """What the page shows for a time in ms: ms below a second, seconds past it."""
    if ms < 1000:
        return f"{ms:.1f} ms"
    s = ms / 1000
    return f"{s:.{2 if s < 10 else 1 if s < 100 else 0}f} s"


def test_details_show_times_past_a_second_in_seconds_and_label_host_memory(
        page: Page, site: LiveFacade, ui_settings: Settings, api: API) -> None:
    assert api("POST", "/embeddings", json={"texts": ["a sentence"], "model": MODEL})
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    formatted = page.evaluate("""import('./fleet/static/format.js').then((f) =>
      [7177.6, 412.34, 999.9, 1000, 12345, 123456, null].map((ms) => f.duration(ms)))""")
    assert formatted == ["7.18 s", "412.3 ms", "999.9 ms", "1.00 s", "12.3 s", "123 s", "—"]
    card(page, ui_settings.node_id).locator("[data-test=details]").click()
    panel = page.locator("[data-test=details-panel]")
    row = panel.locator(f"tr[data-model='{MODEL}']")
    expect(row.locator("td").nth(4)).not_to_have_text("0")
    details = api("GET", f"/api/nodes/{ui_settings.node_id}/npu/details")
    mean = next(m for m in details["models"] if m["name"] == MODEL)["meanLatencyMs"]
    expect(row.locator("td").nth(5)).to_have_text(duration(mean))
    memory = panel.locator(".tile", has=page.locator("[data-test=memory]"))
    expect(memory.locator(".label")).to_have_text("Host memory")
    expect(memory.locator("[data-test=memory]")).to_have_text(f"{details['memoryGB']:.1f} GB")
    page.get_by_role("tab", name="Nodes").click()
    facts = page.locator("[data-test=facade-health] .facts")
    expect(facts).to_contain_text("Host memory")
    expect(facts.locator("dt", has_text=re.compile("^Memory$"))).to_have_count(0)


def test_no_nodes_and_redis_down_are_readable(page: Page, ui_settings: Settings) -> None:
    empty = LiveFacade(ui_settings.model_copy(update={"key_prefix": f"{ui_settings.key_prefix}empty"}))
    down = LiveFacade(ui_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))
    try:
        sign_in(page, empty.url, VIEWER_TOKEN, "/fleet#npu-workers")
        expect(page.locator("[data-test=no-npu-nodes]")).to_contain_text("No node has the npu-worker role")
        expect(page.locator("[data-test=stat-nodes]")).to_have_text("0")
        expect(page.locator("[data-test=stat-utilization]")).to_have_text("—")
        page.get_by_role("tab", name="Nodes").click()
        expect(page.locator("[data-test=no-nodes]")).to_be_visible()

        sign_in(page, down.url, ADMIN_TOKEN, "/fleet#npu-workers")
        expect(page.locator("[data-test=banner]")).to_contain_text("Redis is unreachable")
        expect(page.locator("[data-test=updated]")).to_contain_text("not live: Redis unreachable")
        expect(page.locator("[data-test=no-npu-nodes]")).to_contain_text("could not be read")
    finally:
        empty.stop()
        down.stop()


# --- screenshots for the README


def test_screenshots(page: Page, site: LiveFacade, ui_settings: Settings, api: API, tmp_path: Path) -> None:
    """Writes the tab and the details panel to NPU_SCREENSHOTS_DIR (scripts/screenshots: docs/), else to a
    temporary directory, after some real work so the numbers are not all zero."""
    out = Path(os.environ.get("NPU_SCREENSHOTS_DIR") or tmp_path)
    with httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as http:
        for i in range(8):
            assert http.post("/embeddings", json={"texts": [f"sentence {i}"] * 16, "model": MODEL}).status_code \
                == 200
    sign_in(page, site.url, ADMIN_TOKEN, "/fleet#npu-workers")
    node_card = card(page, ui_settings.node_id)
    expect(node_card).to_be_visible()
    page.wait_for_timeout(300)  # let the bars' transition end
    page.screenshot(path=out / "npu-workers-tab.png")
    node_card.locator("[data-test=details]").click()
    panel = page.locator("[data-test=details-panel]")
    expect(panel.locator(f"tr[data-model='{MODEL}'] td").nth(4)).not_to_have_text("0")
    expect(panel.locator("[data-test=chart] canvas")).to_be_visible()
    panel.screenshot(path=out / "npu-details-panel.png")
    assert (out / "npu-workers-tab.png").stat().st_size > 10_000


"""Which node gets a job: the stored load-balancing strategy applied to the live nodes serving a model.

The dispatcher reads the fleet's state (live workers, their utilization, the setting) at most every
`ROUTE_CACHE_S` per model, so routing costs no Redis command on most requests; jobs this process sent
and has not seen answered count as load too, so a burst does not all land on the node that looked idle.
`FleetRead` names the Redis commands of that read and reads their replies, without I/O, so both drivers
run the same two round trips.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .nodes import LoadBalancing, read_load_balancing
from .protocol import Heartbeat, Keys, app_tag, unpack

Calls = list[tuple[str, tuple[object, ...]]]
"""Redis commands (name, arguments) to run in one pipeline, no transaction."""


@dataclass
class FleetSnapshot:
    """What the fleet looked like for one model when it was read."""

    nodes: dict[str, float]
    """Live node id -> utilization (0-100, the busiest of its workers serving the model)."""
    setting: LoadBalancing
    backlog: int = 0
    """Jobs waiting in the model's streams (shared and per node)."""

    @classmethod
    def from_beats(cls, model: str, beats: list[Heartbeat], setting: LoadBalancing, backlog: int = 0) -> FleetSnapshot:
        nodes: dict[str, float] = {}
        for beat in beats:
            if model in beat.models:
                nodes[beat.node_id] = max(nodes.get(beat.node_id, 0.0), beat.utilization)
        return cls(nodes, setting, backlog)


class FleetRead:
    """A model's fleet in two round trips: the setting, the live workers and the apps, then the workers'
    heartbeats and the depths of the model's streams, every app's (skipped when no worker is live)."""

    def __init__(self, keys: Keys, model: str, now: float):
        self.keys, self.model, self.now = keys, model, now

    def first(self) -> Calls:
        return [("get", (self.keys.load_balancing,)), ("zrangebyscore", (self.keys.live(self.model), self.now, "+inf")),
                ("hkeys", (self.keys.apps,))]

    def second(self, first: list[object]) -> Calls:
        workers = _worker_ids(first)
        if not workers:
            return []
        nodes = sorted({w.rsplit(":", 2)[0] for w in workers})
        apps = [a.decode() if isinstance(a, bytes) else str(a) for a in first[2]] if isinstance(first[2], list) else []
        tags = [app_tag(app or None, level) for app in ["", *apps] for level in ("normal", "low")]
        return [("mget", ([self.keys.worker(w) for w in workers],)),
                *[("xlen", (self.keys.stream(self.model, node, tag),)) for tag in tags for node in [None, *nodes]]]

    def snapshot(self, first: list[object], second: list[object]) -> FleetSnapshot:
        setting = read_load_balancing(first[0] if isinstance(first[0], bytes) else None)
        raws = second[0] if second and isinstance(second[0], list) else []
        beats = [Heartbeat.model_validate(unpack(raw)) for raw in raws if isinstance(raw, bytes)]
        backlog = sum(n for n in second[1:] if isinstance(n, int))
        return FleetSnapshot.from_beats(self.model, beats, setting, backlog)


def _worker_ids(first: list[object]) -> list[str]:
    ids = first[1]
    return [w.decode() if isinstance(w, bytes) else str(w) for w in ids] if isinstance(ids, list) else []


class Router:
    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self._turn: Counter[str] = Counter()

    def candidates(self, model: str, fleet: FleetSnapshot) -> list[str]:
        nodes = sorted(fleet.nodes)
        if fleet.setting.strategy == "model-affinity" and model in fleet.setting.modelAffinity:
            allowed = set(fleet.setting.modelAffinity[model])
            nodes = [n for n in nodes if n in allowed]
        return nodes

    def choose(self, model: str, fleet: FleetSnapshot) -> str | None:
        """The node for the next job of `model`, or None when no allowed node is live."""
        nodes = self.candidates(model, fleet)
        if not nodes:
            return None
        if fleet.setting.strategy == "round-robin":
            turn = self._turn[model]
            self._turn[model] += 1
            return nodes[turn % len(nodes)]
        # least-loaded, and model-affinity among its allowed nodes; ties go round the nodes in turn
        turn = self._turn[model]
        self._turn[model] += 1
        return min(nodes, key=lambda n: (fleet.nodes[n] + self.in_flight[n], (nodes.index(n) - turn) % len(nodes)))

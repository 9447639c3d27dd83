"""Which node gets a job: the stored load-balancing strategy applied to the live nodes serving a model.

The dispatcher reads the fleet's state (live workers, their utilization, the setting) at most every
`ROUTE_CACHE_S` per model, so routing costs no Redis command on most requests; jobs this process sent
and has not seen answered count as load too, so a burst does not all land on the node that looked idle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .nodes import LoadBalancing
from .protocol import Heartbeat


@dataclass
class Route:
    nodes: dict[str, float]
    """Live node id -> utilization (0-100, the busiest of its workers serving the model)."""
    setting: LoadBalancing

    @classmethod
    def from_beats(cls, model: str, beats: list[Heartbeat], setting: LoadBalancing) -> Route:
        nodes: dict[str, float] = {}
        for beat in beats:
            if model in beat.models:
                nodes[beat.node_id] = max(nodes.get(beat.node_id, 0.0), beat.utilization)
        return cls(nodes, setting)


class Router:
    def __init__(self) -> None:
        self.in_flight: Counter[str] = Counter()
        self._turn: Counter[str] = Counter()

    def candidates(self, model: str, route: Route) -> list[str]:
        nodes = sorted(route.nodes)
        if route.setting.strategy == "model-affinity" and model in route.setting.modelAffinity:
            allowed = set(route.setting.modelAffinity[model])
            nodes = [n for n in nodes if n in allowed]
        return nodes

    def choose(self, model: str, route: Route) -> str | None:
        """The node for the next job of `model`, or None when no allowed node is live."""
        nodes = self.candidates(model, route)
        if not nodes:
            return None
        if route.setting.strategy == "round-robin":
            turn = self._turn[model]
            self._turn[model] += 1
            return nodes[turn % len(nodes)]
        # least-loaded, and model-affinity among its allowed nodes; ties go round the nodes in turn
        turn = self._turn[model]
        self._turn[model] += 1
        return min(nodes, key=lambda n: (route.nodes[n] + self.in_flight[n], (nodes.index(n) - turn) % len(nodes)))

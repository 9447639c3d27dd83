"""Which streams and queues a worker reads for a model: its node's (routed work) first, then the shared one."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.protocol import Keys


@dataclass(frozen=True)
class Routes:
    keys: Keys
    node_id: str

    def streams(self, model: str) -> list[str]:
        """The model's interactive streams, in reading order."""
        return [self.keys.stream(model, self.node_id), self.keys.stream(model)]

    def queues(self, model: str) -> list[str]:
        """The model's bulk queues, in the same order."""
        return [self.keys.queue(model, self.node_id), self.keys.queue(model)]

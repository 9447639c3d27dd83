"""Which streams and queues a worker reads for a model: its node's (routed work) first, then the shared one.

A worker of a node whose npu-worker role an operator took away reads only its node's own: it finishes
the work already routed there, and takes nothing from the shared lanes (it is drained)."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.protocol import Keys


@dataclass(frozen=True)
class Routes:
    keys: Keys
    node_id: str
    shared: bool = True
    """Read the model's shared stream and queue too (False: the node is drained)."""

    def streams(self, model: str) -> list[str]:
        """The model's interactive streams, in reading order."""
        own = self.keys.stream(model, self.node_id)
        return [own, self.keys.stream(model)] if self.shared else [own]

    def queues(self, model: str) -> list[str]:
        """The model's bulk queues, in the same order."""
        own = self.keys.queue(model, self.node_id)
        return [own, self.keys.queue(model)] if self.shared else [own]

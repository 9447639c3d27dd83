"""Which streams and queues a worker reads for a model: its node's (routed work) first, then the shared one.

A worker of a node whose npu-worker role an operator took away reads only its node's own: it finishes
the work already routed there, and takes nothing from the shared lanes (it is drained). One `Sources`
lives as long as the worker; the lanes and the heartbeat read it at every use, so a role change is one
assignment (`shared`) that all of them see.
"""

from __future__ import annotations

from dispatcher.protocol import Keys


class Sources:
    def __init__(self, keys: Keys, node_id: str, shared: bool = True):
        self.keys, self.node_id = keys, node_id
        self.shared = shared
        """Read the model's shared stream and queue too (False: the node is drained)."""

    def streams(self, model: str) -> list[str]:
        """The model's interactive streams, in reading order."""
        own = self.keys.stream(model, self.node_id)
        return [own, self.keys.stream(model)] if self.shared else [own]

    def queues(self, model: str) -> list[str]:
        """The model's bulk queues, in the same order."""
        own = self.keys.queue(model, self.node_id)
        return [own, self.keys.queue(model)] if self.shared else [own]

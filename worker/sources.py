"""Which streams and queues a worker reads for a model: its node's (routed work) first, then the shared one,
and for the interactive lane one pair per app and priority (jobs wait per app: `worker/fair.py`).

A worker of a node whose npu-worker role an operator took away reads only its node's own: it finishes
the work already routed there, and takes nothing from the shared lanes (it is drained). One `Sources`
lives as long as the worker; the lanes and the heartbeat read it at every use, so a role change is one
assignment (`shared`), and the apps the heartbeat thread reads (`Keys.apps`) one assignment (`apps`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.protocol import Keys, app_tag


@dataclass(frozen=True)
class Lane:
    """Whose jobs one interactive stream holds."""

    model: str
    app: str
    """The app ("" for jobs that name none)."""
    low: bool
    """Its low-priority jobs, served after the app's normal ones."""


class Sources:
    def __init__(self, keys: Keys, node_id: str, shared: bool = True):
        self.keys, self.node_id = keys, node_id
        self.shared = shared
        """Read the model's shared stream and queue too (False: the node is drained)."""
        self.apps: dict[str, float] = {}
        """App -> weight, as the heartbeat thread last read them; replaced whole, never changed in place."""

    def weight(self, app: str) -> float:
        return self.apps.get(app, 1.0)

    def lanes(self, model: str) -> dict[str, Lane]:
        """The model's interactive streams, in reading order (node's before shared), and whose each is."""
        out: dict[str, Lane] = {}
        for app in ["", *sorted(self.apps)]:
            for low in (False, True):
                tag = app_tag(app or None, "low" if low else "normal")
                own = self.keys.stream(model, self.node_id, tag)
                for stream in [own, self.keys.stream(model, None, tag)] if self.shared else [own]:
                    out[stream] = Lane(model, app, low)
        return out

    def streams(self, model: str) -> list[str]:
        """The model's interactive streams, in reading order."""
        return list(self.lanes(model))

    def queues(self, model: str) -> list[str]:
        """The model's bulk queues, in the same order."""
        own = self.keys.queue(model, self.node_id)
        return [own, self.keys.queue(model)] if self.shared else [own]

"""Jobs of concurrent async callers sent to Redis together, one pipeline at a time (auto-pipelining).

redis-py's asyncio client runs one command per connection, so 64 callers submitting at once opened 64
connections and paid a round trip each. Here a caller queues its XADD and waits; one task sends all
that queued up in one pipeline, and what queues meanwhile goes in the next. A lone caller waits for
nothing; under load, a job waits for at most the one round trip in flight. Bound with the inbox, an
async dispatcher keeps two connections busy however many callers it serves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aredis

Fields = dict[Any, Any]
"""Stream entry fields (redis-py types them more narrowly than its own xadd accepts)."""


class Sender:
    def __init__(self, redis_client: aredis.Redis):
        self.redis = redis_client
        self._queued: list[tuple[str, Fields, asyncio.Future[str]]] = []
        self._task: asyncio.Task[None] | None = None

    def xadd(self, stream: str, fields: Fields) -> asyncio.Future[str]:
        """The entry's id, once the job is on the stream (a caller cancelled meanwhile still learns it,
        to take the job off again)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        self._queued.append((stream, fields, done))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._send())
        return done

    async def _send(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            pipe = self.redis.pipeline(transaction=False)
            for stream, fields, _ in batch:
                pipe.xadd(stream, fields)
            try:
                results: list[Any] = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # Redis unreachable: every caller of the batch gets the error
                results = [exc] * len(batch)
            for (_, _, done), result in zip(batch, results, strict=True):
                if done.done():
                    continue
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result.decode() if isinstance(result, bytes) else str(result))

"""One reply list per async dispatcher, read by one task, instead of one BLPOP per waiting caller.

With a reply key per job, every waiting request held a Redis connection of its own (a facade with 500
requests in flight: 500 connections) and cost a pipeline, a pool checkout and a BLPOP. Here jobs name
the dispatcher's inbox as their reply key; the worker pushes the replies of a whole batch to it in one
RPUSH, and one reader task pops them all in one round trip (BLPOP, then LPOP of the rest, pipelined) and
hands each to its caller by job id. A reply nobody waits for any more (the caller's deadline passed) is
dropped here, as it would have expired on its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aredis

from .errors import REDIS_DOWN
from .protocol import pack, unpack
from .settings import WAIT_SLICE_S

log = logging.getLogger(__name__)
DRAIN = 1000
"""Most replies taken in one round trip after the blocking pop."""
RECONNECT_S = 0.1
"""Pause between attempts while Redis cannot be reached, so the inbox is read again soon after it is back."""

CLOSE_S = 1.0
"""Longest wait for the reader to stop on close."""

Message = dict[str, Any] | BaseException
"""A decoded reply, or the Redis error that cut the wait short."""


class Inbox:
    def __init__(self, redis_client: aredis.Redis, key: str):
        self.redis = redis_client
        self.key = key
        self._waiters: dict[str, asyncio.Queue[Message]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def expect(self, job_id: str) -> asyncio.Queue[Message]:
        """Register before the job is sent, so no reply can arrive unclaimed."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._closing = False
            self._task = loop.create_task(self._read(), name=f"inbox {self.key}")
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._waiters[job_id] = queue
        return queue

    def forget(self, job_id: str) -> None:
        self._waiters.pop(job_id, None)

    async def get(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        """The next reply of an expected job, or None after `timeout` seconds; re-raises a Redis error."""
        queue = self._waiters[job_id]
        try:
            if timeout <= 0 or not queue.empty():
                message = queue.get_nowait()
            else:  # a timeout scope, not `wait_for`: on Python 3.11 that makes a task per wait
                async with asyncio.timeout(timeout):
                    message = await queue.get()
        except (TimeoutError, asyncio.QueueEmpty):
            return None
        if isinstance(message, BaseException):
            raise message
        return message

    async def close(self) -> None:
        """Stop the reader. It is woken by a message rather than cancelled: redis-py does not give a
        connection back until a cancelled blocking pop returns."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await self.redis.rpush(self.key, pack({"job": ""}))
            await asyncio.wait_for(asyncio.shield(task), CLOSE_S)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, CLOSE_S)
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key)

    async def _read(self) -> None:
        while not self._closing:
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.blpop([self.key], timeout=WAIT_SLICE_S)
                pipe.lpop(self.key, DRAIN)
                first, rest = await pipe.execute()
            except Exception as exc:  # callers get the error now instead of waiting out their deadline
                if not isinstance(exc, REDIS_DOWN):
                    log.exception("reading the reply inbox %s failed", self.key)
                for queue in self._waiters.values():
                    queue.put_nowait(exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            if first is not None:
                self._deliver([first[1], *(rest or [])])

    def _deliver(self, raws: list[bytes]) -> None:
        for raw in raws:
            try:
                message = unpack(raw)
                queue = self._waiters.get(message["job"])
            except Exception:
                log.error("unreadable reply in %s dropped", self.key)
                continue
            if queue is not None:
                queue.put_nowait(message)

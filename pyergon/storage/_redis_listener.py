"""Wake-ups between processes sharing a Redis prefix: one pub/sub subscription per backend.

A script that makes work runnable publishes the writer's origin id on ``{prefix}:work``. Each
backend object keeps one dedicated connection subscribed to that channel and turns what other
processes publish into an :class:`asyncio.Event` its waiters wait on; its own writes wake its
waiters directly, without the round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError

from pyergon.storage.base import wait_for_event

__all__ = ["WorkListener"]

logger = logging.getLogger("pyergon.storage.redis")

_LISTEN_KEEPALIVE = 30.0
"""Seconds of pub/sub silence after which the listener pings Redis to find a dead socket."""

_LISTEN_RETRY = (0.05, 2.0)
"""First and longest pause between attempts to re-subscribe after the listener lost Redis."""


class WorkListener:
    """Listens for wake-ups on one channel and wakes the local waiters.

    Args:
        url: The Redis URL.
        channel: The channel wake-ups are published on.
        origin: This backend's origin id; its own messages are skipped.
        client_name: ``CLIENT SETNAME`` of the listening connection.
        where: The server as messages name it (no credentials).
    """

    def __init__(self, url: str, channel: str, origin: str, client_name: str, where: str) -> None:
        self._url = url
        self._channel = channel
        self._origin = origin.encode()
        self._client_name = client_name
        self._where = where
        self._work = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Wake this process's waiters (its own writes are not heard back from Redis)."""
        self._work.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up, or ``timeout`` seconds; return whether one came."""
        if not await wait_for_event(self._work, timeout):
            return False
        self._work.clear()
        return True

    async def start(self) -> None:
        """Start listening and return once the subscription is confirmed.

        Raises:
            RedisError: The first subscription failed (as do ``OSError`` and its kin).
        """
        subscribed = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._listen(subscribed), name=f"pyergon-redis-listener-{self._channel}"
        )
        self._task = task
        await asyncio.wait([subscribed, task], return_when=asyncio.FIRST_COMPLETED)
        if not subscribed.done():  # the listener ended without subscribing: a bug, report it
            task.result()
        await subscribed

    async def stop(self) -> None:
        """Stop listening and close the connection; safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        """Turn wake-ups published by other processes into ``self._work``; re-subscribe on loss.

        Args:
            subscribed: Resolved once the first subscription is confirmed, or failed with the
                error that prevented it.
        """
        pool = ConnectionPool.from_url(
            self._url,
            max_connections=1,
            client_name=self._client_name,
            socket_connect_timeout=5.0,
            socket_timeout=10.0,
            socket_keepalive=True,
            health_check_interval=_LISTEN_KEEPALIVE,
        )
        client = Redis.from_pool(pool)
        pause, longest_pause = _LISTEN_RETRY
        in_outage = False  # said once per outage: a retry every 2 s must not log every 2 s
        try:
            while True:
                pubsub = client.pubsub()
                try:
                    await pubsub.subscribe(self._channel)
                    while (await pubsub.get_message(timeout=_LISTEN_KEEPALIVE)) is None:
                        pass  # the first reply is the subscription's confirmation
                    if subscribed.done():
                        logger.info("listening for pyergon work at %s again", self._where)
                        in_outage = False
                        self._work.set()  # wake-ups published meanwhile were missed
                    else:
                        subscribed.set_result(None)
                    pause = _LISTEN_RETRY[0]
                    while True:
                        message = await pubsub.get_message(timeout=_LISTEN_KEEPALIVE)
                        if (
                            message is not None
                            and message["type"] == "message"
                            and message["data"] != self._origin
                        ):
                            self._work.set()
                except (RedisError, OSError) as error:
                    if not subscribed.done():
                        subscribed.set_exception(error)
                        return
                    logger.log(
                        logging.DEBUG if in_outage else logging.WARNING,
                        "lost the pyergon wake-up subscription at %s (%s); retrying every "
                        "%.2f s or less until it is back",
                        self._where,
                        error,
                        longest_pause,
                    )
                    in_outage = True
                finally:
                    # redis-py leaves PubSub.aclose unannotated.
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest_pause)
        finally:
            await client.aclose()

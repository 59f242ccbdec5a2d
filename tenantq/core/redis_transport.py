"""kombu's Redis transport, with a channel that can still close after its connection was torn down.

Why: a Celery worker on the Redis broker could exit on a Redis restart with ``Unrecoverable error:
AttributeError("'NoneType' object has no attribute 'hostname'")`` (kombu/celery 5.7). On a lost
connection Celery's consumer (``on_connection_error_after_connected``) calls ``connection.collect()``
and then ``connection.close()``:

1. ``collect()`` closes the default channel (the tasks' channel) first. When the loss was noticed on
   another socket (the remote-control pub/sub, say) while a BRPOP was in flight, that close starts by
   reading the BRPOP reply, which raises ``ConnectionError``: the channel is left open, and kombu
   swallows the error. ``collect()`` then closes the transport's channels; the remote-control channel
   (an auto-delete fanout queue to delete) raises ``ConnectionError`` too, which ends that loop before
   the tasks' channel is reached. Last, ``collect()`` detaches the transport (``transport.client =
   None``) whatever happened.
2. ``close()`` closes the default channel again (``collect()`` does not forget it). This time the close
   gets past the BRPOP, drops the channel's connection pools, and restores its unacknowledged messages
   (the attempts still running): that needs a new pool, whose parameters kombu reads from
   ``self.connection.client``, now ``None``. The ``AttributeError`` is neither a connection nor a
   channel error, so neither kombu's ``maybe_close_channel`` nor Celery's ``ignore_errors`` catch it,
   and the worker stops.

Which socket sees the restart first is a race, so it happened on some restarts only. The fix here: a
channel keeps the connection parameters it was last given while its transport was attached, and uses
them after the transport was detached (a pool rebuilt from them talks to the same Redis), so the close
goes on as kombu means it to: the messages are restored (or the restore fails with ``ConnectionError``
while Redis is still down, which every caller handles), and the attempts still running can acknowledge
their messages on the old channel once Redis is back. A channel that never had parameters raises
``ConnectionError`` instead of ``AttributeError``.

``install()`` makes this the transport of ``redis://`` and ``rediss://`` URLs (kombu's transport alias
table, so everything else about those URLs, TLS included, is unchanged); ``tenantq.core.celery`` calls
it for every tenantq process. ``tests/core/test_redis_transport.py`` replays the sequence above;
``tests/faults`` restarts Redis under a running worker.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

REDIS_SCHEMES = ("redis", "rediss")

log = logging.getLogger("tenantq.broker")


class Channel(kombu_redis.Channel):
    _tq_connparams: dict[bool, dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before kombu's __init__: it builds the first pool (its PING).
        self._tq_connparams = {}
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]
            self._tq_connparams[asynchronous] = params
            return dict(params)
        known = self._tq_connparams.get(asynchronous)
        if known is None:
            raise redis.exceptions.ConnectionError("the broker connection of this channel was closed")
        # Rare (a pool rebuilt on a channel of a lost connection): where kombu's own transport stopped.
        log.info("broker channel of a closed connection: reconnecting it with its last parameters")
        return dict(known)


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Make :class:`Transport` the one of ``redis://`` and ``rediss://`` broker URLs in this process."""
    path = f"{__name__}:Transport"
    for scheme in REDIS_SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = path
        # kombu caches each alias's class once resolved: a connection made before this call would
        # otherwise keep the stock transport for the scheme.
        kombu_transports._transport_cache.pop(scheme, None)  # type: ignore[attr-defined]

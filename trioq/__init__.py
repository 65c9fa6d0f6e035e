"""trioq: a distributed queue and task library for trio.

The public namespace is assembled here from private modules, one concept
each, with ``__module__`` rewritten so users see ``trioq.X``.  Client-side
names load lazily on first access: the scheduler process imports this
package too, and must never import a pickler (see ``_serialize``).
``core_impl()`` says whether the compiled Cython core or its pure-Python
twin is in use.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

from ._exceptions import (
    AuthenticationError,
    LocalProtocolError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
    RemoteTaskError,
    SerializationError,
    TaskCancelledError,
    TrioqError,
    WorkerLostError,
)
from ._impl import core_impl

if TYPE_CHECKING:
    from ._client.channel import Channel, ChannelSubscription
    from ._client.client import Client
    from ._client.connect import connect
    from ._client.current import worker_client
    from ._client.future import Future
    from ._client.pipe import Pipe, PipeEnd
    from ._client.queue import SCHEDULE_EVERY, Queue, QueueReceiveChannel, QueueSendChannel
    from ._client.simple_queue import SimpleQueue
    from ._client.variable import Variable
    from ._cluster import Cluster, open_cluster
    from ._scheduler.server import Scheduler
    from ._taskqueue.remote import RemoteWorker
    from ._taskqueue.taskqueue import TaskInfo, TaskQueue
    from ._taskqueue.workers import ProcessWorker, ThreadWorker
    from ._worker.worker import Worker

__version__ = "0.1.0.dev0"

_LAZY = {
    "connect": "._client.connect",
    "Client": "._client.client",
    "open_cluster": "._cluster",
    "Cluster": "._cluster",
    "Channel": "._client.channel",
    "ChannelSubscription": "._client.channel",
    "Queue": "._client.queue",
    "SimpleQueue": "._client.simple_queue",
    "QueueSendChannel": "._client.queue",
    "QueueReceiveChannel": "._client.queue",
    "SCHEDULE_EVERY": "._client.queue",
    "Scheduler": "._scheduler.server",
    "Variable": "._client.variable",
    "Future": "._client.future",
    "Pipe": "._client.pipe",
    "PipeEnd": "._client.pipe",
    "Worker": "._worker.worker",
    "worker_client": "._client.current",
    "TaskQueue": "._taskqueue.taskqueue",
    "TaskInfo": "._taskqueue.taskqueue",
    "ThreadWorker": "._taskqueue.workers",
    "ProcessWorker": "._taskqueue.workers",
    "RemoteWorker": "._taskqueue.remote",
}

__all__ = [
    "core_impl",
    "connect",
    "Client",
    "open_cluster",
    "Cluster",
    "Scheduler",
    "Queue",
    "QueueSendChannel",
    "QueueReceiveChannel",
    "SimpleQueue",
    "SCHEDULE_EVERY",
    "Variable",
    "Channel",
    "ChannelSubscription",
    "Future",
    "Pipe",
    "PipeEnd",
    "Worker",
    "worker_client",
    "TaskQueue",
    "TaskInfo",
    "ThreadWorker",
    "ProcessWorker",
    "RemoteWorker",
    "TrioqError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "SerializationError",
    "AuthenticationError",
    "RemoteError",
    "RemoteTaskError",
    "TaskCancelledError",
    "WorkerLostError",
]


def _publish(obj: Any) -> Any:
    if getattr(obj, "__module__", "").startswith("trioq."):
        with contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = "trioq"
    return obj


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trioq' has no attribute {name!r}")
    value = _publish(getattr(importlib.import_module(module, __name__), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


for _name in __all__:
    if _name not in _LAZY:
        _publish(globals()[_name])
del _name

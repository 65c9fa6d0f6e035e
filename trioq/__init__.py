"""trioq: a distributed queue and task library for trio.

The public namespace is assembled here from private modules, one concept
each, with ``__module__`` rewritten so users see ``trioq.X``.  Client-side
names load lazily on first access: the scheduler process imports this
package too, and must never import a pickler (see ``_wire.serialize``).
``core_impl()`` says whether the compiled Cython core or its pure-Python
twin is in use.
"""

import typing as _typing

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

if _typing.TYPE_CHECKING:
    from . import streams as streams
    from ._client.channel import Channel, ChannelSubscription
    from ._client.client import Client
    from ._client.connect import connect
    from ._client.current import worker_client
    from ._client.future import Future
    from ._client.pipe import Pipe, PipeEnd
    from ._client.queue import SCHEDULE_EVERY, Queue, QueueReceiveChannel, QueueSendChannel
    from ._client.simple_queue import SimpleQueue
    from ._client.statistics import ChannelStatistics, QueueStatistics
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
    "QueueStatistics": "._client.statistics",
    "ChannelStatistics": "._client.statistics",
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
    "QueueStatistics",
    "ChannelStatistics",
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


def _publish(obj: object) -> object:
    if getattr(obj, "__module__", "").startswith("trioq."):
        try:  # noqa: SIM105 -- no contextlib import left in the namespace
            obj.__module__ = "trioq"
        except (AttributeError, TypeError):
            pass
    return obj


for _name in __all__:
    if _name not in _LAZY:
        _publish(globals()[_name])

if not _typing.TYPE_CHECKING:  # type checkers see the imports above, not a catch-all

    def __getattr__(name, _lazy=_LAZY, _publish=_publish):
        """Load a public name (or the ``streams`` module) on first access."""
        import importlib

        if name == "streams":
            return importlib.import_module(".streams", __name__)  # sets trioq.streams
        module = _lazy.get(name)
        if module is None:
            raise AttributeError(f"module 'trioq' has no attribute {name!r}")
        value = _publish(getattr(importlib.import_module(module, __name__), name))
        globals()[name] = value
        return value

    def __dir__():
        return sorted({*__all__, "streams", "__version__"})


# Only the public names (and submodules, as Python adds them) stay in the namespace.
del _name, _publish, _LAZY, _typing

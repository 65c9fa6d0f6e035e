"""A TaskQueue's logging: each queue's ``warn``/``verbose``/``spew`` decide its own records.

Rules:

* Every queue logs on the one logger ``"trioq.taskqueue"`` (``log``) and
  never changes it: no level set, no handler added.  So queues in one
  process cannot change each other's logging, whatever order they are made in.
* A record a flag asks for (``QueueLog``: failures at WARNING with ``warn``,
  attach/detach/update/shutdown at INFO with ``verbose``, every call at
  DEBUG with ``spew``) is made only by a queue with that flag, and the flag
  is the opt-in: it goes to the handlers even where the root logger's level
  would drop it.  A level set on ``"trioq.taskqueue"`` or ``"trioq"``
  (by you, not by a queue), ``logging.disable``, filters, ``disabled`` and
  handler levels still apply.
* Records no flag asks for (a worker died, an update skipped, a failure
  logged instead of raised) use ``log`` as usual: the logger's effective
  level applies.

Complexity: O(depth of the logger name) per record, i.e. O(1).
"""

from __future__ import annotations

import logging

__all__ = ["QueueLog", "log"]

log = logging.getLogger("trioq.taskqueue")


def _level_set() -> int:
    """The level set on ``log`` or a parent below the root (NOTSET: none)."""
    logger: logging.Logger | None = log
    while logger is not None and logger.parent is not None:  # the root has no parent
        if logger.level != logging.NOTSET:
            return logger.level
        logger = logger.parent
    return logging.NOTSET


class QueueLog:
    """One queue's flagged records on ``log``: made only if that queue's flag is on."""

    def __init__(self, *, warn: bool, verbose: bool, spew: bool) -> None:
        self._flags = {logging.WARNING: warn, logging.INFO: verbose, logging.DEBUG: spew}

    def wants(self, level: int) -> bool:
        """True if this queue's flag for ``level`` is on and no level set on the logger drops it."""
        return self._flags[level] and log.manager.disable < level and level >= _level_set()

    def warn(self, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        """With ``warn``: log a failure at WARNING (``exc_info`` adds its traceback)."""
        self._emit(logging.WARNING, msg, args, exc_info)

    def info(self, msg: str, *args: object) -> None:
        """With ``verbose``: log at INFO."""
        self._emit(logging.INFO, msg, args, None)

    def debug(self, msg: str, *args: object) -> None:
        """With ``spew``: log at DEBUG."""
        self._emit(logging.DEBUG, msg, args, None)

    def _emit(
        self, level: int, msg: str, args: tuple[object, ...], exc_info: BaseException | None
    ) -> None:
        if not self.wants(level):
            return
        # The caller of warn/info/debug is the record's source; Logger.handle
        # applies ``disabled`` and filters (but, unlike Logger.log, not the level).
        path, line, function, _ = log.findCaller(stacklevel=3)
        error = None if exc_info is None else (type(exc_info), exc_info, exc_info.__traceback__)
        record = log.makeRecord(log.name, level, path, line, msg, args, error, function)
        log.handle(record)

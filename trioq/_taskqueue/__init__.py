"""AsynQueue's ``TaskQueue``: a priority queue of calls over attachable workers.

``taskqueue`` is the queue itself, ``records`` its bookkeeping, ``workers``
the thread, process and remote workers, ``child`` a process worker's child.
"""

"""AsynQueue's ``TaskQueue``: a priority queue of calls over attachable workers.

``taskqueue`` is the queue's face and lifetime, ``dispatch`` how its calls
reach a worker and come back, ``records`` its bookkeeping, ``logs`` its
per-queue logging, ``workers`` the thread and process workers, ``remote`` the
cluster worker, ``child`` a process worker's child.
"""

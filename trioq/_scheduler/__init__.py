"""The scheduler side: the trio shell (``server``) over a sans-IO state.

``state`` takes decoded messages and returns instructions (``instructions``);
its boards hold the queues, channels, variables and tasks.  This side never
imports a pickler, a client, a worker or the TaskQueue: payloads pass
through it as opaque bytes.
"""

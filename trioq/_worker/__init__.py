"""The worker side: a client connection that runs submitted callables.

``worker`` is the trio shell (asks for work, runs it, reports); ``threads``
shares worker threads between queued plain-function tasks.
"""

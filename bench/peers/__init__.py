"""Modules of ``bench/peers.py``, the side-by-side benchmark of trioq's peers.

``harness`` holds what every contender shares (settings, measurements, the
spawned producer/consumer pair); ``local`` the broker-less peers
(``multiprocessing.Queue``, pyzmq, raw trio TCP); ``dask_peers`` the
dask.distributed ones.  Run ``python bench/peers.py``, not this package.
"""

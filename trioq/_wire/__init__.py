"""The wire: what crosses a connection, and how.

Messages (an op-code enum and one frozen class per message), item
serialization (msgpack, with pickles kept opaque), the pickler for clients
and workers only (``pickling``), authentication and the framed transport.
Nothing here knows the scheduler, a client or a worker.  This package's
face imports nothing, so a side can take ``_wire.messages`` without
reaching ``_wire.pickling``.
"""

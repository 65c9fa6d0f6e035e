"""The client side: ``connect``, the ``Client`` face, its session, and the handles.

The session owns the connection's plumbing (outstanding requests, one-way
sends, the outbox, the serializer, notice routing); every handle (queue,
channel, variable, future, simple queue, pipe, stream stages) talks to the
session, never to another object's private attributes.  Nothing here
imports the worker or the public ``streams`` module.
"""

"""Op codes and typed control messages; msgpack in and out, never pickle.

Rules:

* Every frame's op code is an ``Op``.  A request carries a fresh request id;
  its answer (``REPLY`` or ``ERROR``) carries the same id.  Request id 0
  means "one-way": no answer is sent; if it fails on a queue, the scheduler
  says so with an unsolicited ``QUEUE_ERROR`` notice naming the queue.  Handshake frames
  (``HELLO``, ``AUTH``, ``WELCOME``) have their own fixed shapes in
  ``auth``.
* Each request and reply is one small frozen class whose fields are
  encoded as a msgpack array, in declaration order.  Decoding checks the
  count and the type of every field and raises ``RemoteProtocolError``
  naming the message and the field, so garbage from a peer is a clear error
  and never a crash further in.
* User payloads are ``bytes`` made by the client's serializer; this module
  never looks inside them.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgpack

from .._exceptions import RemoteProtocolError

__all__ = [
    "FLAG_AWAITED",
    "REPLY_OVERHEAD",
    "ITEM_OVERHEAD",
    "Op",
    "Message",
    "encode_message",
    "decode_request",
    "decode_reply",
    "ErrorReply",
    "Hello",
    "Auth",
    "Welcome",
    "Cancel",
    "Ack",
    "Ok",
    "CreditNotice",
    "CreditReturn",
    "ErrorNotice",
    "decode_notice",
    "QueueOpen",
    "QueueInfo",
    "QueuePut",
    "PutDone",
    "QueueGet",
    "Items",
    "QueueReturn",
    "QueueSubscribe",
    "QueueUnsubscribe",
    "Pushed",
    "QueueSize",
    "Count",
    "QueueDelete",
    "EndpointOpen",
    "EndpointClose",
    "VariableSet",
    "VariableGet",
    "Value",
    "VariableDelete",
    "Status",
    "StatusReport",
]


class Op(enum.IntEnum):
    """Frame op codes.  Values are part of the wire format: never renumber."""

    # handshake
    HELLO = 1
    AUTH = 2
    WELCOME = 3
    # answers and connection-level messages
    REPLY = 8
    ERROR = 9
    CANCEL = 10
    ACK = 11
    CREDIT = 12  # scheduler to client, unsolicited: more put credit for a queue
    QUEUE_ERROR = 13  # scheduler to client, unsolicited: a one-way request failed
    BARRIER = 14  # scheduler to client, unsolicited: answer once what you sent is in
    BARRIER_DONE = 15  # (messages in flow_messages)
    PING = 16  # either way: "I am alive", with the sender's interval (see heartbeat)
    SYNC = 17  # answered once everything sent before it is applied (flow_messages)
    # queues
    QUEUE_OPEN = 20
    QUEUE_PUT = 21
    QUEUE_GET = 22
    QUEUE_RETURN = 23
    QUEUE_SIZE = 24
    QUEUE_DELETE = 25
    ENDPOINT_OPEN = 26
    ENDPOINT_CLOSE = 27
    CREDIT_RETURN = 28
    QUEUE_SUBSCRIBE = 29
    QUEUE_UNSUBSCRIBE = 30
    PUSHED = 31  # scheduler to client, unsolicited: items pushed to a subscriber
    QUEUE_STATS = 32
    LEASE_RECALL = 33  # scheduler to client, unsolicited: give unclaimed items back
    # variables
    VARIABLE_SET = 40
    VARIABLE_GET = 41
    VARIABLE_DELETE = 42
    # replayable channels (messages in _channel_messages)
    CHANNEL_OPEN = 50
    CHANNEL_APPEND = 51
    CHANNEL_READ = 52
    CHANNEL_STOP = 53
    CHANNEL_DELETE = 54
    # introspection
    STATUS = 60
    # tasks and workers (messages in _task_messages)
    WORKER_HELLO = 70
    WORKER_READY = 71
    TASK_ASSIGN = 72  # scheduler to worker, unsolicited
    TASK_DONE = 73
    SUBMIT = 74
    TASK_RESULT = 75
    TASK_CANCEL = 76
    TASK_ABORT = 77  # scheduler to worker, unsolicited
    TASK_RELEASE = 78
    TASK_FINISHED = 79  # scheduler to client, unsolicited
    HEARTBEAT = 80
    TASK_WATCH = 81
    SCATTER = 82


#: Frame flag on a request: its sender has nothing else in flight and waits on
#: this answer alone, so the answer goes out at once instead of being gathered
#: with others (latency); without it answers may be gathered (throughput).
FLAG_AWAITED = 0x01

#: Bytes of a frame kept for the envelope around items (message fields, array
#: headers); items themselves get ``max_frame_size - REPLY_OVERHEAD``.
REPLY_OVERHEAD = 1024
#: msgpack bytes around one item in an array (its bin header, at most).
ITEM_OVERHEAD = 5

# -- field checks -------------------------------------------------------------

_Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_list_of(check: _Check) -> _Check:
    return lambda v: type(v) is list and all(check(x) for x in v)


def _is_optional(check: _Check) -> _Check:
    return lambda v: v is None or check(v)


_CHECKS: dict[str, _Check] = {
    "str": lambda v: type(v) is str,
    "int": _is_int,
    "float": lambda v: type(v) is float,
    "bool": lambda v: type(v) is bool,
    "bytes": lambda v: type(v) is bytes,
    "list[bytes]": _is_list_of(lambda v: type(v) is bytes),
    "list[int]": _is_list_of(_is_int),
    "str | None": _is_optional(lambda v: type(v) is str),
    "list[str]": _is_list_of(lambda v: type(v) is str),
    "bytes | None": _is_optional(lambda v: type(v) is bytes),
    "dict[str, Any]": lambda v: type(v) is dict and all(type(k) is str for k in v),
}


class Message:
    """Base of every typed message; subclasses are frozen slotted dataclasses."""

    __slots__ = ()
    OP: ClassVar[Op]  # for requests; replies travel as Op.REPLY
    _FIELDS: ClassVar[tuple[tuple[str, _Check], ...]] = ()

    def to_list(self) -> list[Any]:
        return [getattr(self, name) for name, _ in self._FIELDS]

    def may_park(self) -> bool:
        """Can the scheduler hold this request until something happens (an
        item, room, a value)?  Its answer may then be long in coming."""
        return False


M = TypeVar("M", bound=Message)

_REQUESTS: dict[int, type[Message]] = {}


def _message(cls: type[M]) -> type[M]:
    """Record the field checks of a message dataclass."""
    cls._FIELDS = tuple(
        (f.name, _CHECKS[str(f.type)])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )
    return cls


def _request(cls: type[M]) -> type[M]:
    cls = _message(cls)
    _REQUESTS[cls.OP] = cls
    return cls


# One packer per thread for every message: building a Packer costs more than
# packing a small message.  It has no ``default`` hook, so packing never calls
# back into Python code that could pack again on the same thread.
_packers = threading.local()
#: A packer keeps the largest buffer it ever needed: after a message this
#: large it is let go rather than kept (answers can carry megabytes of items).
KEEP_PACKER_BELOW = 1024 * 1024


def encode_message(message: Message) -> bytes:
    """The payload bytes of ``message``."""
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    data: bytes = pack(message.to_list())
    if len(data) >= KEEP_PACKER_BELOW:
        del _packers.pack  # its buffer grew that large: let it go
    return data


def _decode(cls: type[M], payload: bytes) -> M:
    try:
        fields = msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as exc:
        raise RemoteProtocolError(f"{cls.__name__}: payload is not msgpack ({exc})") from None
    if type(fields) is not list or len(fields) != len(cls._FIELDS):
        raise RemoteProtocolError(
            f"{cls.__name__}: expected {len(cls._FIELDS)} fields, got {_describe(fields)}"
        )
    for (name, check), value in zip(cls._FIELDS, fields, strict=True):
        if not check(value):
            raise RemoteProtocolError(
                f"{cls.__name__}: field {name!r} has the wrong type ({type(value).__name__})"
            )
    return cls(*fields)


def _describe(value: Any) -> str:
    return f"{len(value)} fields" if type(value) is list else type(value).__name__


def decode_request(op: int, payload: bytes) -> Message:
    """Decode a request frame; ``RemoteProtocolError`` for an unknown op or bad fields."""
    cls = _REQUESTS.get(op)
    if cls is None:
        raise RemoteProtocolError(f"unknown op code {op}")
    return _decode(cls, payload)


def decode_reply(cls: type[M], payload: bytes) -> M:
    """Decode a ``REPLY`` payload that the caller expects to be a ``cls``."""
    return _decode(cls, payload)


# -- connection level ---------------------------------------------------------


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """An ``ERROR`` answer: ``kind`` names the exception class (see ``_exceptions.refusal``)."""

    kind: str
    message: str


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Message):
    """Server to client, first frame: protocol version and the server's nonce."""

    version: int
    nonce: bytes


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Auth(Message):
    """Client to server: its nonce, proof of the token, and a display name."""

    nonce: bytes
    proof: bytes
    name: str


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server to client: proof that the server holds the token too; the client id."""

    proof: bytes
    client_id: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Withdraw the parked request ``request_id`` (answered by that request)."""

    OP = Op.CANCEL
    request_id: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Ack(Message):
    """The client handed these leased items to its user: forget them."""

    OP = Op.ACK
    leases: list[int]


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Ok(Message):
    """A reply with nothing to say."""


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class CreditNotice(Message):
    """Unsolicited: about this connection's put credit on ``queue``.

    ``action`` "grant": add ``credit``.  "revoke": stop using credit and
    send back what is left with ``CreditReturn``, quoting ``credit``, which
    here numbers the revocation.  "stop": the queue refuses puts now; drop
    all credit (unlimited included) and ask each time.  "deleted": the same,
    and drop the items prefetched from it too.
    """

    OP = Op.CREDIT
    queue: str
    credit: int
    action: str


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class ErrorNotice(Message):
    """Unsolicited: a one-way request (request id 0) on ``queue`` failed."""

    OP = Op.QUEUE_ERROR
    queue: str
    kind: str
    message: str


_NOTICES: dict[int, type[Message]] = {Op.CREDIT: CreditNotice, Op.QUEUE_ERROR: ErrorNotice}


def _notice(cls: type[M]) -> type[M]:
    """Register an unsolicited scheduler-to-client message (by its ``OP``)."""
    cls = _message(cls)
    _NOTICES[cls.OP] = cls
    return cls


def decode_notice(op: int, payload: bytes) -> Message:
    """Decode an unsolicited scheduler-to-client frame."""
    cls = _NOTICES.get(op)
    if cls is None:
        raise RemoteProtocolError(f"unexpected op code {op} from the scheduler")
    return _decode(cls, payload)


# -- queues ---------------------------------------------------------------------


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueOpen(Message):
    """Create the queue if needed; ``maxsize`` 0 means unbounded."""

    OP = Op.QUEUE_OPEN
    queue: str
    maxsize: int


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class QueueInfo(Message):
    """Reply to ``QueueOpen``: the queue's real maxsize.

    A queue with ``maxsize`` 0 is unbounded: puts to it never need credit.
    Bounded queues grant credit only to connections that put.
    """

    maxsize: int
    accepting: bool  # False once closed or broken: puts must ask, not assume


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueuePut(Message):
    """Put ``items`` (all or none).

    ``credited``: paid from this connection's put credit, so it is accepted
    at once.  Otherwise it parks until there is room if ``wait``, or fails
    with ``WouldBlock``.
    """

    OP = Op.QUEUE_PUT
    queue: str
    items: list[bytes]
    credited: bool
    wait: bool

    def may_park(self) -> bool:
        return self.wait and not self.credited


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class PutDone(Message):
    """Reply to ``QueuePut``: the items are in the queue.

    Credit never rides on a reply: every grant and revocation is a
    ``CreditNotice``, applied by the client's reader in arrival order, so
    both sides always agree on what the client holds.
    """


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class CreditReturn(Message):
    """Answer to a "revoke" ``CreditNotice`` number ``revocation``.

    ``credit`` is what this client had left unused; every credited put it
    sent before this message has already reached the scheduler.
    """

    OP = Op.CREDIT_RETURN
    queue: str
    revocation: int
    credit: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueGet(Message):
    """Take 1..``max_items`` items; park until there is one if ``wait``."""

    OP = Op.QUEUE_GET
    queue: str
    max_items: int
    wait: bool

    def may_park(self) -> bool:
        return self.wait


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Items(Message):
    """Reply to ``QueueGet``: items leased as ``first_lease``, ``first_lease + 1``, ..."""

    items: list[bytes]
    first_lease: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueSubscribe(Message):
    """Push items of ``queue`` to this connection, ahead of asking, keeping up
    to ``window`` of them leased to it (subscribers are served round-robin)."""

    OP = Op.QUEUE_SUBSCRIBE
    queue: str
    window: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueUnsubscribe(Message):
    """Stop pushing items of ``queue`` to this connection."""

    OP = Op.QUEUE_UNSUBSCRIBE
    queue: str


@_notice
@dataclasses.dataclass(frozen=True, slots=True)
class Pushed(Message):
    """Unsolicited, to a subscriber: ``items`` of ``queue`` leased to it,
    numbered from ``first_lease`` (acknowledge or return them as usual)."""

    OP = Op.PUSHED
    queue: str
    items: list[bytes]
    first_lease: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueReturn(Message):
    """Give leased items back to the head of their queue, unconsumed."""

    OP = Op.QUEUE_RETURN
    leases: list[int]


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueSize(Message):
    OP = Op.QUEUE_SIZE
    queue: str


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Count(Message):
    value: int


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class QueueDelete(Message):
    OP = Op.QUEUE_DELETE
    queue: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class EndpointOpen(Message):
    """One more channel endpoint (``kind`` "send" or "receive") on ``queue``."""

    OP = Op.ENDPOINT_OPEN
    queue: str
    kind: str


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class EndpointClose(Message):
    OP = Op.ENDPOINT_CLOSE
    queue: str
    kind: str


# -- variables -------------------------------------------------------------------


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class VariableSet(Message):
    OP = Op.VARIABLE_SET
    name: str
    value: bytes


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class VariableGet(Message):
    """Read a variable; park until it is set if ``wait``."""

    OP = Op.VARIABLE_GET
    name: str
    wait: bool

    def may_park(self) -> bool:
        return self.wait


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class Value(Message):
    value: bytes


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class VariableDelete(Message):
    OP = Op.VARIABLE_DELETE
    name: str


# -- introspection ------------------------------------------------------------------


@_request
@dataclasses.dataclass(frozen=True, slots=True)
class Status(Message):
    OP = Op.STATUS


@_message
@dataclasses.dataclass(frozen=True, slots=True)
class StatusReport(Message):
    """Plain data about queues, variables and clients (see ``_state.status``)."""

    report: dict[str, Any]

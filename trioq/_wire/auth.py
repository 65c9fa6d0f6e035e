"""Token handling and the HMAC challenge/response handshake.

The handshake classes are sans-IO (bytes in, bytes out); only
``read_token_file`` touches the file system.

Rules:

* Every connection starts with a handshake and nothing else from the peer
  is decoded before it succeeds.  The server sends ``HELLO`` (protocol
  version, 32-byte nonce); the client answers ``AUTH`` (its own nonce and
  ``HMAC(token, "client" + server nonce + client nonce)``); the server
  checks it and answers ``WELCOME`` with the mirror proof, so the client
  knows the server holds the token too before it trusts anything from it.
* Handshake frames are tiny: the trio shell decodes them with a
  ``HANDSHAKE_MAX_FRAME`` limit, so a stranger cannot make us buffer much.
* The token never crosses the wire; proofs are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from .._exceptions import AuthenticationError, RemoteProtocolError
from .._impl import core
from .messages import Auth, ErrorReply, Hello, Op, Welcome, decode_reply, encode_message

__all__ = [
    "PROTOCOL_VERSION",
    "HANDSHAKE_MAX_FRAME",
    "TOKEN_ENV",
    "generate_token",
    "read_token_file",
    "token_bytes",
    "ServerHandshake",
    "ClientHandshake",
]

PROTOCOL_VERSION = 1
HANDSHAKE_MAX_FRAME = 512
TOKEN_ENV = "TRIOQ_TOKEN"
_NONCE_SIZE = 32


def generate_token() -> str:
    """A fresh random token (URL-safe text, 256 bits)."""
    return secrets.token_urlsafe(32)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token stored in ``path`` (surrounding whitespace ignored)."""
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {os.fspath(path)!r} is empty")
    return token


def token_bytes(token: str | bytes) -> bytes:
    """The token as bytes; ``ValueError`` if it is empty."""
    data = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if not data:
        raise ValueError("the token must not be empty")
    return data


def _proof(token: bytes, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token, role + server_nonce + client_nonce, hashlib.sha256).digest()


def _frame(op: Op, payload: bytes) -> bytes:
    frame: bytes = core.encode_frame(int(op), 0, payload)
    return frame


def _expect(frame: Any, op: Op, what: str) -> bytes:
    if frame.op == Op.ERROR:
        try:
            error = decode_reply(ErrorReply, frame.payload)
        except RemoteProtocolError:
            raise AuthenticationError("the peer refused the handshake") from None
        raise AuthenticationError(error.message)
    if frame.op != op:
        raise AuthenticationError(f"expected {what} during the handshake, got op {frame.op}")
    payload: bytes = frame.payload
    return payload


class ServerHandshake:
    """The scheduler's side: ``hello()`` to send, then ``receive(frame)``."""

    def __init__(self, token: str | bytes, client_id: int) -> None:
        self._token = token_bytes(token)
        self._client_id = client_id
        self._nonce = secrets.token_bytes(_NONCE_SIZE)
        self.peer_name = ""

    def hello(self) -> bytes:
        """The ``HELLO`` frame to send first."""
        return _frame(Op.HELLO, encode_message(Hello(PROTOCOL_VERSION, self._nonce)))

    def receive(self, frame: Any) -> bytes:
        """Check the client's ``AUTH`` frame; return the ``WELCOME`` frame to send.

        Raises ``AuthenticationError`` for a wrong proof or a malformed answer.
        """
        payload = _expect(frame, Op.AUTH, "AUTH")
        try:
            auth = decode_reply(Auth, payload)
        except RemoteProtocolError as exc:
            raise AuthenticationError(f"malformed AUTH: {exc}") from None
        if len(auth.nonce) != _NONCE_SIZE:
            raise AuthenticationError("malformed AUTH: wrong nonce size")
        expected = _proof(self._token, b"client", self._nonce, auth.nonce)
        if not hmac.compare_digest(expected, auth.proof):
            raise AuthenticationError("the client's token is wrong")
        self.peer_name = auth.name[:200]
        proof = _proof(self._token, b"server", self._nonce, auth.nonce)
        return _frame(Op.WELCOME, encode_message(Welcome(proof, self._client_id)))


class ClientHandshake:
    """The client's side: ``receive_hello(frame)``, then ``receive_welcome(frame)``."""

    def __init__(self, token: str | bytes, name: str = "") -> None:
        self._token = token_bytes(token)
        self._name = name
        self._nonce = secrets.token_bytes(_NONCE_SIZE)
        self._server_nonce = b""

    def receive_hello(self, frame: Any) -> bytes:
        """Check the server's ``HELLO``; return the ``AUTH`` frame to send."""
        payload = _expect(frame, Op.HELLO, "HELLO")
        try:
            hello = decode_reply(Hello, payload)
        except RemoteProtocolError as exc:
            raise AuthenticationError(f"malformed HELLO: {exc}") from None
        if hello.version != PROTOCOL_VERSION:
            raise AuthenticationError(
                f"scheduler speaks protocol {hello.version}, this client {PROTOCOL_VERSION}"
            )
        if len(hello.nonce) != _NONCE_SIZE:
            raise AuthenticationError("malformed HELLO: wrong nonce size")
        self._server_nonce = hello.nonce
        proof = _proof(self._token, b"client", hello.nonce, self._nonce)
        return _frame(Op.AUTH, encode_message(Auth(self._nonce, proof, self._name)))

    def receive_welcome(self, frame: Any) -> int:
        """Check the server's proof; return the client id it assigned."""
        payload = _expect(frame, Op.WELCOME, "WELCOME")
        try:
            welcome = decode_reply(Welcome, payload)
        except RemoteProtocolError as exc:
            raise AuthenticationError(f"malformed WELCOME: {exc}") from None
        expected = _proof(self._token, b"server", self._server_nonce, self._nonce)
        if not hmac.compare_digest(expected, welcome.proof):
            raise AuthenticationError("the scheduler did not prove it holds the token")
        return welcome.client_id

"""One encoded balance frame, framed for the wire once and shared by every socket it goes to."""

from __future__ import annotations

import struct


class Frame:
    """A balance frame's JSON and its unmasked WebSocket text frame (identical per socket)."""

    __slots__ = ("account_id", "data", "version", "wire")

    def __init__(self, account_id: str, version: int, data: bytes) -> None:
        self.account_id = account_id
        self.version = version
        self.data = data  # the JSON text, UTF-8
        self.wire = text_frame(data)


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame (RFC 6455 5.2): servers never mask."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def control_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked ping, pong or close frame (RFC 6455 5.5: at most 125 bytes)."""
    return bytes((0x80 | opcode, len(payload))) + payload

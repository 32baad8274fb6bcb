"""The event stream: every change of a container, numbered, kept in a bounded ring so a
client can resume from the last sequence number it saw, and fanned out to subscribers.
A slow subscriber is dropped rather than letting its queue grow without bound."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import trio

RING_SIZE = 4096
SUBSCRIBER_BUFFER = 1024


class Event(NamedTuple):
    seq: int
    time: float
    type: str
    container: str
    name: str
    attributes: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


class EventLog:
    def __init__(self) -> None:
        self._seq = 0
        self._ring: deque[Event] = deque(maxlen=RING_SIZE)
        self._subscribers: set[trio.MemorySendChannel[Event]] = set()

    def emit(self, type: str, container: str, name: str, **attributes: Any) -> Event:
        self._seq += 1
        event = Event(self._seq, time.time(), type, container, name, attributes)
        self._ring.append(event)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:  # too slow: it loses its subscription, not our memory
                self._subscribers.discard(channel)
                channel.close()
        return event

    async def subscribe(self, since: int | None = None) -> AsyncIterator[Event]:
        """Events after ``since`` still in the ring, then live ones, forever."""
        send, receive = trio.open_memory_channel[Event](SUBSCRIBER_BUFFER)
        backlog = [e for e in self._ring if since is not None and e.seq > since]
        self._subscribers.add(send)
        try:
            for event in backlog:
                yield event
            async for event in receive:
                if since is None or event.seq > since:
                    yield event
        finally:
            self._subscribers.discard(send)
            send.close()

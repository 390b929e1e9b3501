"""Reading a client's request stream without letting the client decide how much memory or time it takes.

`ReadAhead` pulls requests on a helper thread into a small buffer, bounded both in requests and in
bytes. Once it is full the helper stops asking gRPC for more, so HTTP/2 flow control pushes back on
the client instead of the worker holding whatever it sends (a client that never reads its responses
can only fill the buffer and the transport's window). A stream that sends nothing for
`idle_seconds` is ended with DEADLINE_EXCEEDED / STREAM_IDLE, so idle sessions cannot keep handler
threads for ever.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from sam3_serving.errors import Reason, ServiceError

__all__ = ["ReadAhead", "StreamLimits"]

T = TypeVar("T")
_END = object()
_POLL_SECONDS = 0.2  # how often a blocked reader checks whether the handler is gone


@dataclass(frozen=True)
class StreamLimits:
    """How far a worker reads ahead of its answers, and how long a silent stream may stay open."""

    read_ahead: int = 8  # requests buffered beyond the one being answered
    read_ahead_bytes: int = 4 * 1024 * 1024  # ... and their bytes (one larger request still goes through)
    idle_seconds: float = 120.0  # a stream that sends nothing for this long is closed (a user may pause)

    def __post_init__(self) -> None:
        if self.read_ahead < 1 or self.read_ahead_bytes < 1:
            raise ValueError(f"read_ahead and read_ahead_bytes must be at least 1, got {self}")
        if not self.idle_seconds > 0:
            raise ValueError(f"idle_seconds must be positive, got {self.idle_seconds}")


@dataclass(frozen=True)
class _Failure:
    error: Exception


class ReadAhead(Generic[T]):
    """Iterate a request stream through a bounded buffer; raises what the stream raised, in order.

    `waiting(predicate)` tells whether a request already read but not yet taken matches: how
    SegmentStream knows a newer click on the same object is queued behind the current one. Use it
    as a context manager so the helper thread ends with the handler.
    """

    def __init__(self, requests: Iterator[T], limits: StreamLimits) -> None:
        self._limits = limits
        self._buffer: deque[tuple[object, int]] = deque()  # (item, bytes)
        self._bytes = 0
        self._closed = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(requests,), name="stream-read-ahead", daemon=True)
        self._reader.start()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._changed:
            if not self._changed.wait_for(lambda: self._buffer, timeout=self._limits.idle_seconds):
                raise ServiceError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no request for {self._limits.idle_seconds:g} s: idle stream closed; open a new one when needed",
                    Reason.STREAM_IDLE,
                    limit="stream_idle_seconds",
                )
            item, size = self._buffer[0]
            if item is _END or isinstance(item, _Failure):
                self._buffer[0] = (_END, 0)  # later calls end too
                if isinstance(item, _Failure):
                    raise item.error
                raise StopIteration
            self._buffer.popleft()
            self._bytes -= size
            self._changed.notify_all()
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading (the handler is done): the helper thread drops what it holds and exits."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def waiting(self, predicate: Callable[[T], bool]) -> bool:
        """Whether a request read ahead (not yet returned by next()) satisfies `predicate`."""
        with self._changed:
            pending = [item for item, _ in self._buffer if item is not _END and not isinstance(item, _Failure)]
        return any(predicate(item) for item in pending)  # type: ignore[arg-type]

    def _read(self, requests: Iterator[T]) -> None:
        try:
            for request in requests:
                # Waits while full: gRPC stops reading and HTTP/2 flow control pushes back on the client.
                if not self._put(request, _size(request)):
                    return
        except grpc.RpcError:
            pass  # the client went away or the call ended: the handler sees the end of the stream
        except Exception as error:  # e.g. a malformed message: the handler raises it
            self._put(_Failure(error), 0)
            return
        self._put(_END, 0)

    def _put(self, item: object, size: int) -> bool:
        """Buffer `item` once there is room (an empty buffer always has room); False once closed."""
        limits = self._limits
        with self._changed:
            while (
                not self._closed
                and self._buffer
                and (len(self._buffer) >= limits.read_ahead or self._bytes + size > limits.read_ahead_bytes)
            ):
                self._changed.wait(_POLL_SECONDS)
            if self._closed:
                return False
            self._buffer.append((item, size))
            self._bytes += size
            self._changed.notify_all()
            return True


def _size(request: object) -> int:
    byte_size = getattr(request, "ByteSize", None)
    return int(byte_size()) if callable(byte_size) else 0

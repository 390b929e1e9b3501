"""Reading a client's request stream without letting the client decide how much memory or time it takes.

`ReadAhead` pulls requests on a helper thread into a small bounded queue. Once the queue is full the
helper stops asking gRPC for more, so HTTP/2 flow control pushes back on the client instead of the
worker buffering whatever it sends (a client that never reads its responses can only fill the queue
and the transport's window). A stream that sends nothing for `idle_seconds` is ended with
DEADLINE_EXCEEDED / STREAM_IDLE, so idle sessions cannot keep handler threads for ever.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from sam3_serving.errors import Reason, ServiceError

__all__ = ["ReadAhead", "StreamLimits"]

T = TypeVar("T")
_END = object()


@dataclass(frozen=True)
class StreamLimits:
    """How far a worker reads ahead of its answers, and how long a silent stream may stay open."""

    read_ahead: int = 8  # requests buffered beyond the one being answered
    idle_seconds: float = 120.0  # a stream that sends nothing for this long is closed (a user may pause)

    def __post_init__(self) -> None:
        if self.read_ahead < 1:
            raise ValueError(f"read_ahead must be at least 1, got {self.read_ahead}")
        if not self.idle_seconds > 0:
            raise ValueError(f"idle_seconds must be positive, got {self.idle_seconds}")


class ReadAhead(Generic[T]):
    """Iterate a request stream through a bounded queue; raises what the stream raised, in order.

    `waiting(predicate)` tells whether a request already read but not yet taken matches: how
    SegmentStream knows a newer click on the same object is queued behind the current one.
    """

    def __init__(self, requests: Iterator[T], limits: StreamLimits) -> None:
        self._limits = limits
        self._queue: queue.Queue[object] = queue.Queue(maxsize=limits.read_ahead)
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(requests,), name="stream-read-ahead", daemon=True)
        self._reader.start()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            item = self._queue.get(timeout=self._limits.idle_seconds)
        except queue.Empty:
            raise ServiceError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no request for {self._limits.idle_seconds:g} s: idle stream closed; open a new one when needed",
                Reason.STREAM_IDLE,
                limit="stream_idle_seconds",
            ) from None
        if item is _END:
            self._queue.put(_END)  # later calls end too
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(_END)
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop reading (the handler is done): the helper thread drops what it holds and exits."""
        self._closed.set()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def waiting(self, predicate: Callable[[T], bool]) -> bool:
        """Whether a request read ahead (not yet returned by next()) satisfies `predicate`."""
        with self._queue.mutex:
            pending = list(self._queue.queue)
        return any(predicate(item) for item in pending if item is not _END and not isinstance(item, _Failure))  # type: ignore[arg-type]

    def _read(self, requests: Iterator[T]) -> None:
        try:
            for request in requests:
                if not self._put(request):  # waits while full: gRPC stops reading, the client is pushed back
                    return
        except grpc.RpcError:
            pass  # the client went away or the call ended: the handler sees the end of the stream
        except Exception as error:  # e.g. a malformed message: the handler raises it
            self._put(_Failure(error))
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        """Queue `item`, waiting for room; False once the handler closed the stream."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False


@dataclass(frozen=True)
class _Failure:
    error: Exception

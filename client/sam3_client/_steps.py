"""The step runner: one sans-I/O flow (`_flows`) driven by either client, one rpc at a time.

A flow is a generator that yields the rpcs it needs (`Call`) and receives their responses, or has
the call's `Sam3Error` thrown in. `Client` makes each rpc with blocking stubs and `AsyncClient`
awaits grpc.aio stubs (`Connection.invoke` raises a failed rpc as a Sam3Error naming its address);
`Steps` does everything else (busy retries, the error thrown into the flow), so neither client
repeats any logic. `Feed` and `stream_errors` do the same for streaming calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, cast

import grpc

from sam3_client._busy import BusyRetry
from sam3_client._rpcs import Call
from sam3_client.errors import Sam3Error

T = TypeVar("T")
Flow = Generator[Call, Any, T]


class Steps(Generic[T]):
    """Runs a flow one rpc at a time; the clients' only job is to make each rpc:

    steps = Steps(flow)
    for call in steps:                      # the next rpc the flow needs
        sleep(steps.pause)                  # > 0 only before repeating a call the worker was too busy for
        with steps.answer():                # a failed rpc's Sam3Error is thrown into the flow
            steps.send(make_the_rpc(call))  # the response goes back into the flow
    return steps.result
    """

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._call: Call | None = None
        self._retry: BusyRetry | None = None
        self._result: T | None = None
        self._reply: Any = None
        self.pause = 0.0
        self._advance(None, None)

    def __iter__(self) -> Iterator[Call]:
        while self._call is not None:
            yield self._call

    def send(self, reply: Any) -> None:
        """The response of the current call: the flow receives it when the `answer()` block ends."""
        self._reply = reply

    @contextmanager
    def answer(self) -> Iterator[None]:
        """Around making the current call: its Sam3Error is retried (busy) or thrown into the flow; errors
        the flow raises itself (a timeout between rpcs, advice on a miss) leave the block unchanged."""
        try:
            yield
        except Sam3Error as error:
            again = self._retry.after(error) if self._retry is not None else None
            if again is not None:
                self.pause, self._call = again
                return
            failed: Sam3Error | None = error
        else:
            failed = None
        self._advance(self._reply, failed)

    @property
    def result(self) -> T:
        return cast(T, self._result)

    def _advance(self, reply: Any, error: Sam3Error | None) -> None:
        self.pause, self._reply = 0.0, None
        try:
            self._call = self._flow.send(reply) if error is None else self._flow.throw(error)
        except StopIteration as done:
            self._call, self._result = None, done.value
        self._retry = BusyRetry(self._call) if self._call is not None else None


@contextmanager
def stream_errors(call: Any, target: str) -> Iterator[None]:
    """Around reading a streaming call to `target`: RpcError -> Sam3Error, and the call cancelled if the
    reader stops early."""
    try:
        yield
    except grpc.RpcError as error:
        raise Sam3Error.from_rpc(error, target) from None
    finally:
        call.cancel()


class Feed:
    """The request side of a streaming call.

    A failure while producing requests (an unreadable file, a bad prompt) ends the request stream
    cleanly and is raised to the reader once the answers to the earlier requests are in, instead
    of gRPC logging it and cancelling the whole call.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None

    def wrap(self, requests: Iterable[T]) -> Iterator[T]:
        try:
            yield from requests
        except Exception as error:
            self.error = error

    async def wrap_async(self, requests: AsyncIterable[T]) -> AsyncIterator[T]:
        try:
            async for request in requests:
                yield request
        except Exception as error:
            self.error = error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


async def each_item(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """`items`, plain or async, as an async iterator: the async client's streams take either."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item

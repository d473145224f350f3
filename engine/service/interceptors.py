"""Server interceptors shared by the service: handler re-wrapping and the RPC error counter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter

Behavior = Callable[..., Any]


class Undecodable:
    """Stands in for a request message whose bytes did not parse: the call still reaches the
    interceptors (authentication, audit, throttling) and is then refused with INVALID_ARGUMENT,
    instead of gRPC logging a traceback and answering INTERNAL before any of them ran."""

    def __init__(self, error: str) -> None:
        self.error = error


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A request deserializer that returns `Undecodable` instead of raising."""
    if deserializer is None or getattr(deserializer, "_lenient", False):
        return deserializer

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bad input
            return Undecodable(f"{type(exc).__name__}: {exc}"[:300])

    parse._lenient = True  # type: ignore[attr-defined]
    return parse


def rewrap(handler: Any, wrap: Callable[[Behavior, tuple[bool, bool]], Behavior], lenient_requests: bool = False
           ) -> Any:
    """A method handler of the same kind whose behaviour is wrap(behaviour, (request_streaming, response_streaming));
    with `lenient_requests` undecodable request messages arrive as `Undecodable` instead of failing in gRPC."""
    deserializer = lenient(handler.request_deserializer) if lenient_requests else handler.request_deserializer
    ser = {"request_deserializer": deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, (False, False)), **ser)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, (False, True)), **ser)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, (True, False)), **ser)
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, (True, True)), **ser)


def _ended_code(context: grpc.ServicerContext, raised: bool) -> str | None:
    """The status name a call ended with, or None for OK. A handler that raised without setting a
    code ends UNKNOWN (what gRPC sends then)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return None if code == grpc.StatusCode.OK else code.name
    return "UNKNOWN" if raised else None


class ErrorCountInterceptor(grpc.ServerInterceptor):
    """Counts every RPC that ends with an error status in `counter` (labels method, code).

    It must be the outermost interceptor, so refusals made before a servicer runs (authentication,
    roles, throttling) are counted as well as the servicers' own errors. Method names are the full
    gRPC names (`faceengine.v1.Cameras/GetCamera`); calls to unknown methods (UNIMPLEMENTED) are not
    counted, so a caller cannot grow the label set. A response stream the client closed early
    (cancelled) is not an error of the server's and is not counted."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method).lstrip("/")
        return rewrap(handler, lambda behavior, streaming: self._counted(behavior, method, streaming[1]))

    def _count(self, method: str, context: grpc.ServicerContext, raised: bool) -> None:
        code = _ended_code(context, raised)
        if code is not None:
            self.counter.labels(method, code).inc()

    def _counted(self, behavior: Behavior, method: str, response_streaming: bool) -> Behavior:
        if response_streaming:
            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from behavior(request, context)
                except GeneratorExit:  # the client went away mid-stream
                    raise
                except BaseException:
                    self._count(method, context, raised=True)
                    raise
                self._count(method, context, raised=False)

            return stream

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = behavior(request, context)
            except BaseException:
                self._count(method, context, raised=True)
                raise
            self._count(method, context, raised=False)
            return response

        return call

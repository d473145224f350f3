"""`--follow` ends on Ctrl-C: the stream is read on a helper thread and the call cancelled from the main thread
(a KeyboardInterrupt raised inside gRPC's iterator could leave closing the channel waiting for ever), and a stream
error still reaches the caller. A stand-in call object plays the gRPC stream (no model involved)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import grpc
import pytest

from engine.cli.client_cmds import follow_until_interrupted
from tests.shared_data import ROOT

CHILD = textwrap.dedent("""
    import sys, threading
    from engine.cli.client_cmds import follow_until_interrupted

    class BlockingCall:  # a live stream with no message yet: next() waits until the call is cancelled
        def __init__(self):
            self.cancelled = threading.Event()
        def __iter__(self):
            print("ready", flush=True)
            self.cancelled.wait()
            import grpc
            class Cancelled(grpc.RpcError):
                def code(self):
                    return grpc.StatusCode.CANCELLED
            raise Cancelled()
        def cancel(self):
            self.cancelled.set()

    call = BlockingCall()
    follow_until_interrupted(call, print)
    print("cancelled" if call.cancelled.is_set() else "not cancelled", flush=True)
""")


def test_ctrl_c_cancels_the_stream_and_returns() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    assert out.strip() == "cancelled"


class _Failing:
    """A stream that delivers two messages, then fails as a server going away does."""

    def __iter__(self):  # noqa: ANN204
        yield "a"
        yield "b"

        class Unavailable(grpc.RpcError):
            def code(self) -> grpc.StatusCode:
                return grpc.StatusCode.UNAVAILABLE

        raise Unavailable()

    def cancel(self) -> None:
        raise AssertionError("nothing to cancel: nobody pressed Ctrl-C")


def test_messages_are_handled_in_order_and_a_stream_error_reaches_the_caller() -> None:
    seen: list[str] = []
    with pytest.raises(grpc.RpcError) as info:
        follow_until_interrupted(_Failing(), seen.append)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert seen == ["a", "b"]


def test_a_stream_that_ends_returns() -> None:
    seen: list[int] = []
    follow_until_interrupted(iter_call([1, 2, 3]), seen.append)
    assert seen == [1, 2, 3]


class iter_call:  # noqa: N801 - reads as a function at the call site
    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)

    def cancel(self) -> None:
        raise AssertionError("not interrupted")

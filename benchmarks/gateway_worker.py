"""Camera gateways for bench_pipeline's gRPC pass, run as their own process (as real gateways are:
other machines or at least other processes), so their Python work does not share the server's GIL.

Reads a pickle {address, cameras, payloads (JPEG bytes or None), raw frames, fps, window, order}
from argv[1]; prints one JSON line {first_send, last_recv, latencies_ms, ids, errors}."""

from __future__ import annotations

import json
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.client import Client  # noqa: E402
from engine.service.proto import pb  # noqa: E402


def main() -> None:
    job = pickle.loads(Path(sys.argv[1]).read_bytes())
    client = Client(job["address"], token="")
    client.wait_ready(30)
    lock = threading.Lock()
    lat: list[float] = []
    ids: set[str] = set()
    errors = [0]
    first, last = [float("inf")], [0.0]
    payloads, raws, fps, window = job["payloads"], job["raws"], job["fps"], job["window"]
    go = threading.Event()

    def gateway(i: int, cam: str) -> None:
        sem = threading.Semaphore(window)
        sent: dict[int, float] = {}

        def gen() -> Iterator[pb.Frame]:
            go.wait()
            for j, fi in enumerate(job["order"][i]):
                sem.acquire()
                now = time.monotonic()
                sent[j] = now
                with lock:
                    first[0] = min(first[0], now)
                if payloads is not None:
                    yield pb.Frame(camera_id=cam, sequence=j, capture_time=1.0 + j / fps, encoded=payloads[fi])
                else:
                    w, h, data = raws[fi]
                    yield pb.Frame(camera_id=cam, sequence=j, capture_time=1.0 + j / fps,
                                   raw=pb.RawImage(width=w, height=h, format="BGR8", data=data))

        for res in client.stream(gen()):
            now = time.monotonic()
            with lock:
                if res.HasField("error"):
                    errors[0] += 1
                else:
                    lat.append((now - sent.pop(res.sequence, now)) * 1000)
                    ids.update(f.match.person_id for f in res.faces if f.HasField("match"))
                last[0] = max(last[0], now)
            sem.release()

    threads = [threading.Thread(target=gateway, args=(i, c), daemon=True) for i, c in enumerate(job["cameras"])]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=600)
    client.close()
    print(json.dumps({"first_send": first[0], "last_recv": last[0], "latencies_ms": lat, "ids": sorted(ids),
                      "errors": errors[0]}))


if __name__ == "__main__":
    main()

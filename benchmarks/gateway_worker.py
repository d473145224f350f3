"""Camera gateways for the gRPC passes of bench_pipeline and bench_memory, run as their own process
(as real gateways are: other machines or at least other processes), so their Python work does not
share the server's GIL.

Reads a pickle {address, cameras, payloads (JPEG bytes or None), raws, window, order,
rate (frames/s per camera; 0 = as fast as the window allows), seconds (0 = each order once),
clip_fps (optional: stamp frame j with stream start + j / clip_fps, the clip's own timeline as the in-process
passes use, so tracking and re-embedding intervals see the same times; absent = wall time at send)}
from argv[1]; prints one JSON line {first_send, last_recv, latencies_ms, tracks, frames, errors,
dropped, camera_tracks}. `tracks` maps each matched person id to the number of distinct (camera, track) pairs
matched to it: one per match event; `camera_tracks` maps each camera to its [track, person] pairs."""

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
    tracks: dict[str, set[tuple[str, int]]] = {}
    errors, dropped, frames = [0], [0], [0]
    first, last = [float("inf")], [0.0]
    payloads, raws, window = job["payloads"], job["raws"], job["window"]
    rate, seconds = float(job.get("rate", 0.0)), float(job.get("seconds", 0.0))
    clip_fps = float(job.get("clip_fps", 0.0))
    go = threading.Event()

    def gateway(i: int, cam: str) -> None:
        sem = threading.Semaphore(window)
        sent: dict[int, float] = {}
        order = job["order"][i]

        def gen() -> Iterator[pb.Frame]:
            go.wait()
            start = time.monotonic() + (i / rate / len(job["cameras"]) if rate else 0.0)  # stagger cameras
            wall0 = time.time()
            j = 0
            while True:
                if seconds:
                    if time.monotonic() - start >= seconds:
                        return
                elif j >= len(order):
                    return
                fi = order[j % len(order)]
                if rate:
                    ahead = start + j / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                sem.acquire()
                now = time.monotonic()
                sent[j] = now
                with lock:
                    first[0] = min(first[0], now)
                stamp = wall0 + j / clip_fps if clip_fps else time.time()
                if payloads is not None:
                    yield pb.Frame(camera_id=cam, sequence=j, capture_time=stamp, encoded=payloads[fi])
                else:
                    w, h, data = raws[fi]
                    yield pb.Frame(camera_id=cam, sequence=j, capture_time=stamp,
                                   raw=pb.RawImage(width=w, height=h, format="BGR8", data=data))
                j += 1

        for res in client.stream(gen()):
            now = time.monotonic()
            with lock:
                frames[0] += 1
                if res.HasField("error"):
                    errors[0] += 1
                    dropped[0] += len(res.dropped_sequences)
                    sent.pop(res.sequence, None)
                else:
                    lat.append((now - sent.pop(res.sequence, now)) * 1000)
                    for f in res.faces:
                        if f.HasField("match"):
                            tracks.setdefault(f.match.person_id, set()).add((cam, f.track_id))
                last[0] = max(last[0], now)
            sem.release()

    threads = [threading.Thread(target=gateway, args=(i, c), daemon=True) for i, c in enumerate(job["cameras"])]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=(seconds or 600) + 120)
    client.close()
    print(json.dumps({"first_send": first[0], "last_recv": last[0], "latencies_ms": lat,
                      "tracks": {k: len(v) for k, v in sorted(tracks.items())}, "frames": frames[0],
                      "errors": errors[0], "dropped": dropped[0],
                      "camera_tracks": {c: sorted([t, p] for p, v in tracks.items() for cc, t in v if cc == c)
                                        for c in job["cameras"]}}))


if __name__ == "__main__":
    main()

"""Scale-out across OS processes: two `faceengine serve` processes on one SQLite store. A person enrolled
through A is matched by B, and `faceengine matches --follow` subscribed to A prints the match B wrote
(relayed through the shared store). A's metrics endpoint is scraped to see the subscription register."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from engine.client import Client
from engine.service.proto import pb
from tests.procs import LineReader, cli, cli_env, default_sigint, metric, scrape, serve, wait_for
from tests.shared_data import IMAGES, ROOT
from tests.test_service import _frames, _scene


def test_match_written_by_one_serve_process_reaches_a_follower_of_the_other(tmp_path: Path, model_dir: Path) -> None:
    env = cli_env(model_dir, FACEENGINE_SERVER_EVENT_RELAY_S="0.5")
    db = tmp_path / "shared.db"
    with serve(tmp_path, env, db, "a", metrics=True) as a, serve(tmp_path, env, db, "b") as b:
        out = cli("enroll", "--server", a.address, "--watchlist", "vip", "--create", "--person", "obama",
                  "--name", "Barack Obama", str(IMAGES / "obama.jpg"), env=env)
        assert out.returncode == 0, out.stderr
        out = cli("cameras", "add", "b-cam", "push", "--server", b.address, env=env)  # a gateway camera on B
        assert out.returncode == 0, out.stderr
        follow = subprocess.Popen([sys.executable, "-m", "engine", "matches", "--follow", "--json", "--server",
                                   a.address, "--camera", "b-cam"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        try:
            lines = LineReader(follow)
            # A counts the follower among its live subscribers once the subscription is in place
            subscribed = wait_for(lambda: metric(scrape(a.metrics_port), "faceengine_subscribers") == 1, 30)
            assert subscribed, follow.poll() is not None and follow.communicate(timeout=5)
            with Client(b.address) as cb:
                # B sees A's enrolment once its gallery notices the store's new version
                photo = pb.SearchRequest(image=pb.Image(encoded=(IMAGES / "obama2.jpg").read_bytes()), top_k=1)
                assert wait_for(lambda: [h.person_id for h in cb.matches.SearchByImage(photo).hits] == ["obama"], 15)
                results = list(cb.stream(_frames("b-cam", 4, _scene(), gap=0.05)))
            assert {f.match.person_id for r in results for f in r.faces if f.HasField("match")} == {"obama"}
            line = lines.next(timeout=20)
            assert line is not None, "the follower on A printed nothing"
            event = json.loads(line)
            assert (event["person_id"], event["camera_id"], event["name"]) == ("obama", "b-cam", "Barack Obama")
            assert event["thumbnail_bytes"] > 0 and not event["update"]
            follow.send_signal(signal.SIGINT)  # Ctrl-C ends --follow cleanly
            assert follow.wait(timeout=20) == 0, follow.stderr.read() if follow.stderr else ""
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
        # both processes answer history from the one store
        for srv in (a, b):
            out = cli("matches", "--server", srv.address, "--json", "--since", "10m", env=env)
            assert out.returncode == 0, out.stderr
            assert [json.loads(x)["event_id"] for x in out.stdout.splitlines()] == [event["event_id"]]

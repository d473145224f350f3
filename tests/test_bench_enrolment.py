"""The benchmarks' held-out enrolment: one person, one identity, on the real clips and models.

The pipeline benchmark's identity checks ask each pass for exactly the clip persons enrolled here, so
a person enrolled twice becomes a "missed" identity that no pass can find (stage_360p's one performer
was enrolled as clip-00 and clip-01 before the same-person bar)."""

from __future__ import annotations

import itertools
from pathlib import Path

from engine.config import Config
from tests.benchmods import bench_module
from tests.shared_data import VIDEOS


def _enrol(video: str, cfg: Config, analyzer):  # noqa: ANN001, ANN202
    common = bench_module("common")
    store, gallery = common.open_gallery(cfg, analyzer)
    clip, _ = common.load_frames(VIDEOS / video)
    _, held = common.split_clip(clip)
    persons = common.enroll_heldout(analyzer, gallery, cfg, clip, held)
    return common, store, gallery, persons


def test_one_performer_is_one_person_with_several_templates(cfg: Config, analyzer, tmp_path: Path) -> None:  # noqa: ANN001
    common, store, gallery, persons = _enrol("stage_360p.mp4", cfg, analyzer)
    try:
        # the held-out frames of stage_360p show one performer (frames 178-219)
        assert list(persons) == ["clip-00"], persons
        person = gallery.get_person(common.WATCHLIST, "clip-00")
        assert 2 <= person.template_count <= common.MAX_TEMPLATES
        assert person.display_name.startswith("held-out frame 178")  # later templates keep the first name
    finally:
        store.close()


def test_different_people_stay_apart(cfg: Config, analyzer, tmp_path: Path) -> None:  # noqa: ANN001
    common, store, gallery, persons = _enrol("multiface_1080p.mp4", cfg, analyzer)
    try:
        assert len(persons) >= 5, persons  # seven people face the camera; the clear ones are enrolled
        bar = common.same_person_bar(cfg, analyzer)
        assert 0.2 < bar < 0.5
        _, vecs, labels = store.templates(analyzer.model_name)
        by_person = {pid: vecs[[i for i, lab in enumerate(labels) if lab[1] == pid]] for pid in persons}
        for a, b in itertools.combinations(persons, 2):  # every pair of people scores below the bar
            assert float((by_person[a] @ by_person[b].T).max()) < bar, (a, b)
    finally:
        store.close()

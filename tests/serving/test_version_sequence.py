"""Online version numbers never repeat: not across restarts, not after kill -9, not between
the layers (champion, canary) that share one sequence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from online_layer.learner import OnlineLearner
from protos.errors import FailedPrecondition
from serving.version_sequence import VersionSequence, sequence_path

REPO = Path(__file__).resolve().parents[2]


def test_numbers_continue_after_a_restart_past_everything_handed_out(tmp_path: Path) -> None:
    path = sequence_path(tmp_path)
    first = VersionSequence(path, block=10)
    before = [first() for _ in range(3)]
    assert before == [1, 2, 3]
    again = VersionSequence(path, block=10)  # the restarted learner
    after = [again() for _ in range(12)]
    assert min(after) > max(before)
    assert after == sorted(set(after))  # unique, increasing (not dense: a block is skipped)


def test_a_block_is_on_disk_before_any_number_of_it_is_used(tmp_path: Path) -> None:
    path = sequence_path(tmp_path)
    sequence = VersionSequence(path, block=4)
    for _ in range(9):
        number = sequence()
        assert json.loads(path.read_text())["reserved_through"] >= number


def test_a_learner_killed_mid_stream_is_followed_by_higher_numbers(tmp_path: Path) -> None:
    path = sequence_path(tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom serving.version_sequence import VersionSequence\n"
         f"s = VersionSequence({str(path)!r}, block=7)\n"
         "while True:\n    print(s(), flush=True)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert writer.stdout is not None
        printed = [int(writer.stdout.readline()) for _ in range(50)]
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert printed == list(range(1, 51))
    assert VersionSequence(path, block=7)() > max(printed)


def test_threads_sharing_one_sequence_never_get_the_same_number(tmp_path: Path) -> None:
    sequence = VersionSequence(sequence_path(tmp_path), block=16)
    got: list[int] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [sequence() for _ in range(200)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(got) == 800 and len(set(got)) == 800


@pytest.mark.parametrize("text", ["not json", '{"other": 3}', '{"reserved_through": -1}',
                                  '{"reserved_through": "7"}'])
def test_a_damaged_reservation_is_refused_with_its_path(tmp_path: Path, text: str) -> None:
    path = sequence_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(FailedPrecondition, match="online-version-sequence.json"):
        VersionSequence(path)()


def test_layers_of_one_learner_and_a_canary_sharing_its_sequence_get_distinct_versions(
    tmp_path: Path,
) -> None:
    sequence = VersionSequence(sequence_path(tmp_path))
    champion = OnlineLearner({}, base_version="b1", embedding_dim=4, sequencer=sequence)
    canary = OnlineLearner({}, base_version="b2", embedding_dim=4, sequencer=champion.sequencer)
    versions = [champion.publish().version, canary.publish().version]
    champion.rebase("b3")
    versions.append(champion.publish().version)
    restarted = OnlineLearner({}, base_version="b1", embedding_dim=4,
                              sequencer=VersionSequence(sequence_path(tmp_path)))
    versions.append(restarted.publish().version)
    numbers = [int(v.rsplit("-", 1)[1]) for v in versions]
    assert numbers == sorted(set(numbers)), versions
    assert versions[0].startswith("ol-b1-g0-") and versions[2].startswith("ol-b3-g1-")

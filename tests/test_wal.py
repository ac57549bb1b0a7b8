"""The write-ahead log keeps every acknowledged record, in order, through crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from protos.wal import WalCorrupt, WriteAheadLog


def test_records_come_back_in_order_after_a_reopen(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    seqs = [log.append(f"r{i}".encode()) for i in range(5)]
    log.close()
    again = WriteAheadLog(tmp_path)
    assert seqs == [1, 2, 3, 4, 5]
    assert [p for _, p in again.read()] == [f"r{i}".encode() for i in range(5)]
    assert again.append(b"next") == 6
    again.close()


def test_a_torn_last_record_is_cut_and_the_log_goes_on(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    log.append(b"kept")
    log.close()
    segment = next(tmp_path.glob("*.wal"))
    with open(segment, "ab") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00")  # a header cut short: a crash mid-append
    again = WriteAheadLog(tmp_path)
    assert [p for _, p in again.read()] == [b"kept"]
    assert again.append(b"after") == 2
    assert [p for _, p in again.read()] == [b"kept", b"after"]
    again.close()


def test_damage_before_the_end_is_an_error_not_silent_loss(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, segment_bytes=32)
    for i in range(4):
        log.append(f"record-{i}".encode() * 3)
    log.close()
    first = sorted(tmp_path.glob("*.wal"))[0]
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(WalCorrupt):
        WriteAheadLog(tmp_path)


def test_segments_rotate_and_old_ones_are_dropped_after_a_checkpoint(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path, segment_bytes=64)
    for i in range(20):
        log.append(b"x" * 30)
    assert len(list(tmp_path.glob("*.wal"))) > 3
    log.checkpoint("learner", 15)
    assert log.checkpointed("learner") == 15
    assert log.checkpointed("nobody") == 0
    log.truncate_before(log.checkpointed("learner") + 1)
    assert [s for s, _ in log.read(after=15)] == [16, 17, 18, 19, 20]
    assert min(s for s, _ in log.read()) <= 16
    log.close()


def test_concurrent_appends_get_dense_unique_sequences(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    got: list[int] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(50):
            seq = log.append(f"{k}-{i}".encode())
            with lock:
                got.append(seq)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(1, 401))
    assert len({p for _, p in log.read()}) == 400
    log.close()


def test_oversized_records_are_refused(tmp_path: Path) -> None:
    log = WriteAheadLog(tmp_path)
    with pytest.raises(ValueError, match="limit"):
        log.append(b"x" * (64 * 1024 * 1024 + 1))
    log.close()


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    """A writer prints each sequence once ``append`` returned; SIGKILL it mid-stream."""
    script = textwrap.dedent(
        f"""
        import sys
        from protos.wal import WriteAheadLog
        log = WriteAheadLog({str(tmp_path)!r}, segment_bytes=4096)
        i = 0
        while True:
            seq = log.append(b"payload-%d" % i)
            print(seq, flush=True)
            i += 1
        """
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    acknowledged = 0
    deadline = time.monotonic() + 30
    try:
        assert proc.stdout is not None
        while acknowledged < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line:
                acknowledged = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert acknowledged >= 300
    log = WriteAheadLog(tmp_path)
    recovered = [seq for seq, _ in log.read()]
    assert recovered[: acknowledged] == list(range(1, acknowledged + 1))
    log.close()

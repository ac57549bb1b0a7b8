"""A registry writer killed at any point leaves the earlier versions and the champion intact.

The writer (``registry_writer.py``, a subprocess) registers a version, records its gates and
promotes it. It is SIGKILLed before its 1st, 2nd, ... Nth filesystem call (every step of a
write), and then at seeded random moments while writing larger artifacts in a loop. After
each kill the registry must show: the earlier versions byte for byte, the champion either
unchanged or the new, complete version, and no torn version; and the next writer must work.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

from protos.registry import ModelRegistry

WRITER = pathlib.Path(__file__).with_name("registry_writer.py")


def tree_digest(path: pathlib.Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def make_artifact(path: pathlib.Path, files: int, size: int) -> pathlib.Path:
    rng = random.Random(files * 7919 + size)
    for i in range(files):
        target = path / f"part{i % 3}" / f"w{i}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(size))
    (path / "manifest.json").write_text('{"format": "test"}\n')
    return path


def seed_registry(root: pathlib.Path, src: pathlib.Path) -> None:
    """Two versions, the first the champion, the second rejected."""
    reg = ModelRegistry(root)
    lineage = {
        "data_window": {},
        "feature_service": "ranker_v1",
        "parent": None,
        "code_version": "x",
        "metrics": {},
    }
    a = reg.register("base", src, lineage)
    reg.set_status("base", a, "approved", {"offline_evaluation": {"passed": True, "reason": "ok"}})
    reg.promote("base", a, reason="first")
    b = reg.register("base", src, {**lineage, "parent": a})
    reg.set_status(
        "base", b, "rejected", {"offline_evaluation": {"passed": False, "reason": "worse"}}
    )


def snapshot(root: pathlib.Path) -> dict:
    reg = ModelRegistry(root)
    return {
        "versions": {
            v.version: (tree_digest(v.path), v.status, dict(v.lineage))
            for v in reg.versions("base")
        },
        "champion": reg.champion("base").version,
        "history": reg.champion_history("base"),
    }


def check_intact(root: pathlib.Path, before: dict, src_digest: dict[str, str]) -> str:
    """Assert the invariants after a kill; return what the kill left ('old' or 'new' champion)."""
    reg = ModelRegistry(root)
    versions = {v.version: v for v in reg.versions("base")}
    old = set(before["versions"])
    assert old <= set(versions), f"an earlier version vanished: {old - set(versions)}"
    for name, (digest, status, lineage) in before["versions"].items():
        v = versions[name]
        assert tree_digest(v.path) == digest, f"{name} changed"
        assert (v.status, dict(v.lineage)) == (status, lineage)
    new = set(versions) - old
    assert len(new) <= 1, f"more than one new version: {new}"
    for name in new:  # visible means complete: every artifact file, readable metadata
        v = versions[name]
        assert tree_digest(v.path, skip=("version.json", "status.json")) == src_digest, (
            f"torn {name}"
        )
        assert v.lineage["parent"] == before["champion"]
        assert v.status in {"registered", "approved", "promoted"}
    champion = reg.champion("base").version
    assert champion == before["champion"] or champion in new, f"champion points at {champion}"
    history = reg.champion_history("base")
    assert history[: len(before["history"])] == before["history"]
    assert len(history) - len(before["history"]) == (1 if champion in new else 0)
    return "new" if champion in new else "old"


def writer(root: pathlib.Path, src: pathlib.Path, kill_at: int, loops: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(root), str(src), str(kill_at), str(loops)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_before_every_filesystem_call_of_a_write(tmp_path: pathlib.Path) -> None:
    src = make_artifact(tmp_path / "src", files=3, size=4096)
    pristine = tmp_path / "pristine"
    seed_registry(pristine, src)
    before = snapshot(pristine)

    dry = tmp_path / "dry"
    shutil.copytree(pristine, dry)
    proc = writer(dry, src, kill_at=-1)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    total_calls = int(out)
    assert total_calls > 20  # the write really has many steps to interrupt

    src_digest = tree_digest(src)
    outcomes = []
    for k in range(1, total_calls + 1):
        root = tmp_path / f"kill{k}"
        shutil.copytree(pristine, root)
        proc = writer(root, src, kill_at=k)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, f"writer was not killed at call {k}: {err}"
        outcomes.append(check_intact(root, before, src_digest))
        # The next writer cleans up after the dead one and succeeds.
        reg = ModelRegistry(root)
        v = reg.register("base", src, {**before["versions"]["base-0001"][2], "parent": None})
        reg.promote("base", v, reason=f"after a kill at call {k}")
        assert reg.champion("base").version == v
        assert not any((root / "base" / ".staging").iterdir())
        shutil.rmtree(root)
    # Early kills leave the old champion, late ones the new: both sides were exercised.
    assert outcomes[0] == "old" and outcomes[-1] == "new"


def test_sigkill_at_random_moments_while_writing_large_artifacts(tmp_path: pathlib.Path) -> None:
    src = make_artifact(tmp_path / "src", files=12, size=256 * 1024)
    root = tmp_path / "registry"
    seed_registry(root, src)
    src_digest = tree_digest(src)
    rng = random.Random(0)
    for _ in range(5):
        before = snapshot(root)
        proc = writer(root, src, kill_at=0, loops=100)
        time.sleep(0.15 + rng.random() * 0.4)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL  # it was still writing
        # Versions the killed writer completed must be whole; the earlier ones untouched.
        reg = ModelRegistry(root)
        done = [v for v in reg.versions("base") if v.version not in before["versions"]]
        for v in done:
            assert tree_digest(v.path, skip=("version.json", "status.json")) == src_digest, (
                f"torn {v.version}"
            )
        for name, (digest, status, lineage) in before["versions"].items():
            v = reg.get("base", name)
            assert (tree_digest(v.path), v.status, dict(v.lineage)) == (digest, status, lineage)
        champion = reg.champion("base").version
        assert champion == before["champion"] or champion in {v.version for v in done}

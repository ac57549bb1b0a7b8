"""Training a candidate base for the controller: a Ray job, a subprocess, or in-process.

Every backend runs the existing entry point with ``--no-promote`` (``python -m
base_model.train``: data gates, fit, offline gate, register; the controller decides about
promotion), or its library call in-process. ``start`` returns a JSON *handle* that the
controller persists before it waits; ``poll(handle)`` answers None while the training runs,
else a ``TrainingOutcome``. A handle is all a restarted controller has, so each backend says
what a handle from a dead controller means:

- ``RayJobTrainer``: the job has a deterministic submission id (``freshrank-train-<cycle>``);
  the job API is asked for it. Running: keep waiting; succeeded: the version is read from
  the job's log (the command's JSON line); failed, stopped or unknown to the cluster: over.
- ``ProcessTrainer``: the child writes its JSON line to a file in the controller's
  directory and runs in its own session, so it outlives a killed controller. Its pid still
  running ``base_model.train``: keep waiting; gone: the file says what it did, or nothing
  (``gone``: abandoned).
- ``LocalTrainer``: the training dies with the controller; a handle from another process
  is ``gone``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from serving.settings import Settings

logger = logging.getLogger(__name__)

__all__ = [
    "LocalTrainer",
    "ProcessTrainer",
    "RayJobTrainer",
    "Trainer",
    "TrainingJob",
    "TrainingOutcome",
    "outcome_from_output",
    "train_arguments",
]

ENTRY_POINT = ("-m", "base_model.train")


@dataclass(frozen=True)
class TrainingJob:
    """One training the controller asks for."""

    cycle: str
    as_of: datetime
    decision: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingOutcome:
    """``status``: "trained" (``version`` registered, see its gate status), "blocked" (the
    data gates), "failed" (an error), or "gone" (nothing left to wait for or read)."""

    status: str
    version: str | None = None
    detail: str = ""
    result: dict[str, Any] = field(default_factory=dict)


class Trainer(Protocol):
    kind: str

    def start(self, job: TrainingJob) -> dict[str, Any]: ...

    def poll(self, handle: dict[str, Any]) -> TrainingOutcome | None: ...

    def stop(self, handle: dict[str, Any]) -> None: ...


def train_arguments(settings: Settings, job: TrainingJob, backend: str) -> list[str]:
    """The flags of ``python -m base_model.train`` for ``job``: ``--no-promote``, the cycle's
    training time, the workspace, its settings file, and every ``[base_model]`` value that
    differs from its default as ``--set`` (so the job trains with the controller's
    section even when it came from overrides, not the file), and the decision that asked
    for it (``--trigger``). Other sections reach the child only through the settings file
    (``[feature_store]`` follows ``--workspace``)."""
    from base_model.config import BaseModelConfig

    args = ["--no-promote", "--as-of", job.as_of.isoformat(), "--backend", backend,
            "--workspace", str(settings.workspace), "--registry", str(settings.registry_dir)]
    if settings.source is not None:
        args += ["--config", str(Path(settings.source).absolute())]
    if job.decision:  # why it trains, in the new version's lineage (as the local backend does)
        args += ["--trigger", json.dumps(job.decision, default=str)]
    default = BaseModelConfig()
    for f in dataclasses.fields(settings.base_model):
        value = getattr(settings.base_model, f.name)
        if value != getattr(default, f.name):
            value = list(value) if isinstance(value, tuple) else value
            args += ["--set", f"{f.name}={json.dumps(value)}"]
    return args


def outcome_from_output(text: str, exit_code: int | None) -> TrainingOutcome:
    """Read the command's last JSON line (a ``TrainResult`` or ``{"status": "blocked"}``)."""
    record: dict[str, Any] | None = None
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if record is not None and record.get("status") == "blocked":
        return TrainingOutcome("blocked", detail=str(record.get("reason", "")), result=record)
    if record is not None and record.get("version"):
        return TrainingOutcome("trained", str(record["version"]), str(record.get("status")), record)
    tail = " ".join(text.split())[-300:]
    if exit_code is None:
        return TrainingOutcome("gone", detail="the training left no result" + (f": {tail}" if tail else ""))
    return TrainingOutcome("failed", detail=f"exit status {exit_code}" + (f": {tail}" if tail else ""))


class LocalTrainer:
    """``train_base_model(..., promote=False, backend="local")`` in this process."""

    kind = "local"

    def __init__(self, settings: Settings):
        self._settings = settings
        self._token = uuid.uuid4().hex
        self._done: dict[str, TrainingOutcome] = {}

    def start(self, job: TrainingJob) -> dict[str, Any]:
        from base_model.data import validate_training_set
        from base_model.errors import BaseModelError, DataGateError
        from base_model.training import train_base_model
        from serving.training_sources import history_times, training_set_from_log

        settings = self._settings
        key = f"{self._token}:{job.cycle}"
        try:
            days = settings.base_model.train_days
            table, as_of = training_set_from_log(settings.feature_store, job.as_of.isoformat(), days)
            result = train_base_model(
                settings.base_model, validate_training_set(table), settings.registry_dir,
                as_of=as_of, trigger=job.decision or None, promote=False, backend="local",
                history=history_times(settings.feature_store, as_of, days),
            )
            outcome = TrainingOutcome("trained", result.version, result.status, result.to_dict())
        except DataGateError as exc:
            outcome = TrainingOutcome("blocked", detail=str(exc), result={"gates": exc.report})
        except (BaseModelError, ValueError, OSError) as exc:
            outcome = TrainingOutcome("failed", detail=f"{type(exc).__name__}: {exc}")
        self._done[key] = outcome
        return {"backend": self.kind, "key": key, "pid": os.getpid()}

    def poll(self, handle: dict[str, Any]) -> TrainingOutcome | None:
        found = self._done.get(str(handle.get("key")))
        return found or TrainingOutcome("gone", detail="an in-process training of a controller that stopped")

    def stop(self, handle: dict[str, Any]) -> None:
        return None


class ProcessTrainer:
    """``python -m base_model.train --no-promote ...`` as a child in its own session."""

    kind = "process"

    def __init__(self, settings: Settings, directory: Path, base_backend: str = "ray"):
        self._settings = settings
        self._directory = Path(directory)
        self._base_backend = base_backend
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, job: TrainingJob) -> dict[str, Any]:
        self._directory.mkdir(parents=True, exist_ok=True)
        out = self._directory / f"train-{job.cycle}.out"
        err = self._directory / f"train-{job.cycle}.err"
        argv = [sys.executable, *ENTRY_POINT, *train_arguments(self._settings, job, self._base_backend)]
        if self._base_backend == "ray" and self._settings.ray_address:
            argv += ["--ray-address", self._settings.ray_address]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            child = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self._children[child.pid] = child
        logger.info("training as pid %s: %s", child.pid, shlex.join(argv))
        return {"backend": self.kind, "pid": child.pid, "out": str(out), "err": str(err), "argv": argv}

    def poll(self, handle: dict[str, Any]) -> TrainingOutcome | None:
        pid = int(handle["pid"])
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            self._children.pop(pid, None)
        elif _runs_training(pid):
            return None  # a child of the controller that died; it writes its own result
        else:
            code = None
        text = _read(handle.get("out"))
        outcome = outcome_from_output(text, code)
        if outcome.status == "failed":
            tail = " ".join(_read(handle.get("err")).split())[-300:]
            outcome = dataclasses.replace(outcome, detail=f"exit status {code}: {tail}")
        return outcome

    def stop(self, handle: dict[str, Any]) -> None:
        pid = int(handle["pid"])
        if pid in self._children or _runs_training(pid):
            try:
                os.killpg(pid, 15)  # its own session: the fit's workers go with it
            except ProcessLookupError:
                pass


class RayJobTrainer:
    """The entry point as a Ray job on ``address`` (the job API, ``http://head:8265``)."""

    kind = "ray_job"

    def __init__(self, settings: Settings, address: str):
        self._settings = settings
        self._address = address
        self._client: Any = None

    def _jobs(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self._address)
        return self._client

    @staticmethod
    def submission_id(cycle: str) -> str:
        return f"freshrank-train-{cycle}"

    def start(self, job: TrainingJob) -> dict[str, Any]:
        argv = ["python", *ENTRY_POINT, *train_arguments(self._settings, job, "ray")]
        submission = self.submission_id(job.cycle)
        self._jobs().submit_job(entrypoint=shlex.join(argv), submission_id=submission,
                                metadata={"freshrank_cycle": job.cycle})
        logger.info("submitted Ray job %s to %s", submission, self._address)
        return {"backend": self.kind, "submission_id": submission, "address": self._address}

    def poll(self, handle: dict[str, Any]) -> TrainingOutcome | None:
        from ray.job_submission import JobStatus

        submission = str(handle["submission_id"])
        try:
            status = self._jobs().get_job_status(submission)
        except Exception as exc:  # the job API does not know it (a new cluster), or is down
            if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
                return TrainingOutcome("gone", detail=f"Ray job {submission} is unknown to {self._address}")
            raise
        if status in (JobStatus.PENDING, JobStatus.RUNNING):
            return None
        logs = self._jobs().get_job_logs(submission)
        outcome = outcome_from_output(logs, 0 if status == JobStatus.SUCCEEDED else 1)
        if outcome.status == "failed":
            outcome = dataclasses.replace(outcome, detail=f"Ray job {submission} {status.value}: {outcome.detail}")
        return outcome

    def stop(self, handle: dict[str, Any]) -> None:
        try:
            self._jobs().stop_job(str(handle["submission_id"]))
        except Exception:  # already over, or unknown
            logger.debug("stop_job %s", handle, exc_info=True)


def _runs_training(pid: int) -> bool:
    """Whether ``pid`` is alive and is ``base_model.train`` (a reused pid is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"base_model.train" in cmdline


def _read(path: Any) -> str:
    try:
        return Path(str(path)).read_text(encoding="utf-8", errors="replace") if path else ""
    except OSError:
        return ""

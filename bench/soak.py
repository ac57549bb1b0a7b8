"""Memory soak: replica and learner RSS over minutes of steady Rank + Feedback traffic.

Issue 17's memory target: "replica and learner RSS flat (within 10%) over a 10-minute soak
at 200 calls/s". The app is the one `freshrank serve` runs (Serve's gRPC proxy, one Ranker
replica, the Learner) on the workspace `bench/serving.py` builds (reused when it exists).
Load is open-loop: Rank calls are started at a fixed rate (at most ``--max-in-flight`` at
once, so an overloaded app shows as a missed rate, not as a growing queue in the client),
100 candidates each; every ``--feedback-every`` Ranks one Feedback call carries the top 10
items of each of those requests (a click with probability 5%, seeded), so the learner
joins, learns and publishes all along, as in production. Every ``--sample-s`` seconds
the RSS of each Ranker and Learner replica process (and the proxy, for information) is
read with psutil.

Judgement (written before the first run; `bench/RESULTS.md` repeats it): after
``--warmup`` seconds, RSS_start = median of the samples in the first minute after the
warm-up, RSS_end = median of the samples in the last minute; a process is **flat** when
RSS_end / RSS_start - 1 lies within +/-10%. The target is met only when every Ranker and
Learner process is flat and the achieved Rank rate is at least 95% of the asked rate with
no failed call; below the rate, the memory verdict is reported "at <rate> calls/s" and
the target is not met. The least-squares slope (MB per minute) after the warm-up is
reported beside it.

Prints one JSON object last.

    PYTHONPATH=$PWD .venv/bin/python bench/soak.py --seconds 600 --rate 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets for the app's num_cpus=0 replicas
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/online_layer.py
_ROOT = _HERE.parent
if str(_ROOT) not in sys.path:
    sys.path.append(str(_ROOT))

ROLES = {"Ranker": ("#Ranker#", ":Ranker"), "Learner": ("#Learner#", ":Learner"),
         "proxy": ("ProxyActor",)}


def replica_pids(app_name: str) -> dict[str, list[int]]:
    """Live process ids per role, from Ray's actor table."""
    import ray

    found: dict[str, list[int]] = {role: [] for role in ROLES}
    for info in ray._private.state.actors().values():
        if info["State"] != "ALIVE":
            continue
        name = f"{info.get('Name', '')} {info.get('ActorClassName', '')}"
        for role, marks in ROLES.items():
            if any(mark in name for mark in marks) and (role == "proxy" or app_name in name):
                found[role].append(int(info["Pid"]))
    return found


def feedback_bytes(requests: list[tuple[bytes, bytes]], rng: Any) -> bytes:
    """One FeedbackRequest: the top 10 of each (RankRequest, RankResponse) pair."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from protos.freshrank.v1 import ranking_pb2 as pb

    message = pb.FeedbackRequest()
    now = Timestamp()
    now.GetCurrentTime()
    for request_body, response_body in requests:
        request = pb.RankRequest.FromString(request_body)
        response = pb.RankResponse.FromString(response_body)
        for position, item in enumerate(response.items[:10]):
            event = message.events.add(request_id=request.request_id, user_id=request.user_id,
                                       item_id=item.item_id, label=float(rng.random() < 0.05),
                                       position=position)
            event.event_time.CopyFrom(now)
    return message.SerializeToString()


async def paced_load(address: str, app_name: str, info: dict[str, Any], token: str, rate: float, seconds: float,
                     max_in_flight: int, feedback_every: int, on_tick: Any) -> dict[str, Any]:
    """Rank at ``rate`` calls/s for ``seconds``; Feedback every ``feedback_every`` answers."""
    import grpc
    import numpy as np

    from bench.serving import request_bytes

    rng = np.random.default_rng(0)
    metadata = (("application", app_name), ("authorization", f"Bearer {token}"))
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        rank = channel.unary_unary("/freshrank.v1.Ranker/Rank")
        feedback = channel.unary_unary("/freshrank.v1.Ranker/Feedback")
        gate = asyncio.Semaphore(max_in_flight)
        errors: dict[str, int] = {}
        counts = {"rank": 0, "feedback": 0, "accepted": 0, "skipped": 0}
        answered: list[tuple[bytes, bytes]] = []
        tasks: set[asyncio.Task[None]] = set()

        async def one(serial: int) -> None:
            body = request_bytes(info, 100, serial)
            try:
                reply = await rank(body, metadata=metadata, timeout=10)
                counts["rank"] += 1
                answered.append((body, reply))
                if len(answered) >= feedback_every:
                    batch = answered[:]
                    answered.clear()
                    from protos.freshrank.v1 import ranking_pb2 as pb

                    got = pb.FeedbackReply.FromString(
                        await feedback(feedback_bytes(batch, rng), metadata=metadata, timeout=10))
                    counts["feedback"] += 1
                    counts["accepted"] += got.accepted
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            finally:
                gate.release()

        started = time.monotonic()
        serial, next_tick = 0, started
        while (now := time.monotonic()) - started < seconds:
            due = started + serial / rate
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
            elif gate.locked():
                counts["skipped"] += 1  # the app is behind: this call is not started
                serial += 1
                await asyncio.sleep(0)
            else:
                await gate.acquire()
                task = asyncio.create_task(one(serial))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                serial += 1
            if now >= next_tick:
                on_tick(now - started)
                next_tick += 1.0
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    return {"elapsed_s": elapsed, "rank_calls": counts["rank"], "rank_rate": counts["rank"] / elapsed,
            "asked_rate": rate, "skipped": counts["skipped"], "feedback_calls": counts["feedback"],
            "feedback_accepted": counts["accepted"], "errors": errors}


def judge(samples: list[dict[str, Any]], warmup: float, seconds: float) -> dict[str, Any]:
    """Per process: RSS_start, RSS_end (MB), their ratio - 1, flat or not, slope MB/min."""
    import numpy as np

    verdicts: dict[str, Any] = {}
    keys = sorted({k for s in samples for k in s["rss_mb"]})
    for key in keys:
        t = np.array([s["t"] for s in samples if key in s["rss_mb"]])
        rss = np.array([s["rss_mb"][key] for s in samples if key in s["rss_mb"]])
        after = t >= warmup
        start = rss[after & (t < warmup + 60)]
        end = rss[t >= seconds - 60]
        if start.size == 0 or end.size == 0 or after.sum() < 3:
            verdicts[key] = {"verdict": "not enough samples"}
            continue
        change = float(np.median(end) / np.median(start) - 1)
        slope = float(np.polyfit(t[after] / 60, rss[after], 1)[0])
        verdicts[key] = {"rss_start_mb": float(np.median(start)), "rss_end_mb": float(np.median(end)),
                         "change": change, "flat": abs(change) <= 0.10, "slope_mb_per_min": slope}
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path(tempfile.gettempdir()) / "freshrank-bench-serving")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--feedback-every", type=int, default=20)
    parser.add_argument("--sample-s", type=float, default=5.0)
    args = parser.parse_args(argv)

    import psutil

    from bench.serving import TOKEN, _settings, build_workspace
    from protos.ray_local import apply_loopback_environment
    from serving import app

    apply_loopback_environment()
    os.environ["FRESHRANK_INGRESS_TOKEN"] = TOKEN
    args.workspace.mkdir(parents=True, exist_ok=True)
    info = build_workspace(args.workspace)
    settings = _settings(args.workspace)
    result: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                              "python": sys.version.split()[0],
                              "command": " ".join([Path(sys.executable).name, *sys.argv]),
                              "load_before": os.getloadavg()}
    running = app.start(settings)
    samples: list[dict[str, Any]] = []
    try:
        pids = replica_pids(running.app_name)
        result["pids"] = pids
        processes = {f"{role}:{pid}": psutil.Process(pid) for role, ps in pids.items() for pid in ps}
        last = {"t": -1e9}

        def on_tick(t: float) -> None:
            if t - last["t"] < args.sample_s:
                return
            last["t"] = t
            rss = {}
            for key, process in processes.items():
                try:
                    rss[key] = process.memory_info().rss / 2**20
                except psutil.Error:
                    pass
            samples.append({"t": t, "rss_mb": rss, "load": os.getloadavg()[0]})

        result["load"] = asyncio.run(paced_load(
            running.grpc_address, running.app_name, info, TOKEN, args.rate, args.seconds, args.max_in_flight,
            args.feedback_every, on_tick))
    finally:
        app.stop()
    result["samples"] = samples
    result["memory"] = judge(samples, args.warmup, args.seconds)
    load = result["load"]
    at_rate = load["rank_rate"] >= 0.95 * args.rate and not load["errors"]
    steady = [v for k, v in result["memory"].items() if not k.startswith("proxy")]
    result["target_met"] = bool(at_rate and steady and all(v.get("flat") for v in steady))
    result["load_after"] = os.getloadavg()
    for key, verdict in result["memory"].items():
        print(f"{key}: {verdict}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

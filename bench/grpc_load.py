"""The Rank load generator the serving benches share: C calls in flight on one asyncio gRPC
channel, a warm-up, then ``seconds`` measured (latency of the calls that succeeded, errors by
status code)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def rank_load(address: str, bodies: list[bytes], metadata: tuple[tuple[str, str], ...],
                    concurrency: int, seconds: float, warmup: float) -> dict[str, Any]:
    """Rank ``bodies`` (serialized requests, cycled) with ``concurrency`` calls in flight;
    returns calls, QPS, errors and p50/p99 in ms over the measured window."""
    import grpc
    import numpy as np

    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call = channel.unary_unary("/freshrank.v1.Ranker/Rank")
        latencies: list[float] = []
        errors: dict[str, int] = {}
        state = {"measuring": False, "stop": False}

        async def worker(k: int) -> None:
            i = k
            while not state["stop"]:
                t0 = time.perf_counter()
                try:
                    await call(bodies[i % len(bodies)], metadata=metadata, timeout=10)
                    if state["measuring"]:
                        latencies.append(time.perf_counter() - t0)
                except grpc.aio.AioRpcError as error:
                    if state["measuring"]:
                        errors[error.code().name] = errors.get(error.code().name, 0) + 1
                i += concurrency

        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(warmup)
        state["measuring"] = True
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        state["measuring"] = False
        elapsed = time.perf_counter() - t0
        state["stop"] = True
        await asyncio.gather(*tasks)
    lat = np.array(latencies) * 1e3
    return {"calls": int(lat.size), "qps": lat.size / elapsed, "errors": errors,
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None}

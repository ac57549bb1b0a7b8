"""Benchmark: samples/s of the Ray Train job vs a bare PyTorch loop, same model and data, one run.

Runs standalone where PyTorch and Ray are installed (no Feast, no network; Python 3.11+): the
training arrays are generated in-process (``base_model.synthetic.synthetic_encoded``,
deterministic), then

* ``bare``: ``base_model.loop.bare_loop`` -- the data moved to the device once, a seeded
  on-device shuffle per epoch: the best a plain PyTorch loop does, with no data pipeline;
* ``ray_cached``: ``base_model.trainer.fit_with_ray`` as ``freshrank train`` runs it -- a
  ``TorchTrainer`` reading Ray Data; the worker reads its shard once, in chunks of
  ``--chunk-batches`` mini-batches through ``iter_torch_batches`` (prefetched, pinned memory
  on CUDA), into device memory (``load_s``, outside the timed epochs, as the bare loop's
  copy to the device), then shuffles it there every epoch as the bare loop does;
* ``ray_stream``: the same with every epoch streamed through Ray Data (``cache_max_rows=0``);
* ``score`` (on request): ``BaseScorer.score`` latency on CPU for one user and N candidates,
  the per-request call serving makes, measured inside a one-CPU Ray actor as a Serve replica
  runs it (Ray sets ``OMP_NUM_THREADS=1`` there, so NumPy's BLAS stays on one thread; in a
  plain process set ``OPENBLAS_NUM_THREADS=1`` for the same latency).

Samples/s count the timed training steps only (Ray's start-up is reported separately as
``fit_wall_s``); ``steady`` leaves out the first epoch (warm-up). The last line printed is one
JSON object.

    python bench/train.py --device cpu --rows 300000 --epochs 3
    python bench/train.py --device cuda --rows 4000000 --batch-size 8192 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protos.ray_local import apply_loopback_environment  # noqa: E402

apply_loopback_environment()  # before anything imports ray

import numpy as np  # noqa: E402
import torch  # noqa: E402

from base_model.config import BaseModelConfig  # noqa: E402
from base_model.data import Encoded  # noqa: E402
from base_model.loop import LoopSettings, bare_loop  # noqa: E402
from base_model.model import ModelSpec, cold_state, dense_kinds, transform_dense_numpy  # noqa: E402
from base_model.synthetic import synthetic_encoded  # noqa: E402
from feature_store.catalog import ITEM_FEATURES, USER_FEATURES  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--rows", type=int, default=300_000, help="training rows")
    p.add_argument("--valid-rows", type=int, default=20_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--embedding-dim", type=int, default=32)
    p.add_argument("--hidden", default="128,64", help="MLP widths, comma-separated")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--cpus-per-worker", type=float, default=0, help="0: all CPUs but one, split")
    p.add_argument("--prefetch-batches", type=int, default=2, help="chunks Ray Data prepares ahead")
    p.add_argument("--chunk-batches", type=int, default=16, help="mini-batches per Ray Data chunk")
    p.add_argument(
        "--shuffle-buffer-rows",
        type=int,
        default=0,
        help="Ray Data local shuffle buffer on the streamed epochs (rows are pre-shuffled once)",
    )
    p.add_argument(
        "--modes",
        default="bare,ray_cached,ray_stream",
        help="comma-separated subset of bare, ray_cached, ray_stream, score",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    n_dense = len(USER_FEATURES) + len(ITEM_FEATURES)

    t0 = time.perf_counter()
    train = synthetic_encoded(args.rows, args.users, args.items, n_dense, seed=args.seed)
    valid = synthetic_encoded(args.valid_rows, args.users, args.items, n_dense, seed=args.seed + 1)
    gen_s = time.perf_counter() - t0
    spec = ModelSpec(
        args.users,
        args.items,
        len(USER_FEATURES),
        len(ITEM_FEATURES),
        args.embedding_dim,
        tuple(int(w) for w in args.hidden.split(",")),
        dense_kinds((*USER_FEATURES, *ITEM_FEATURES)),
    )
    x = transform_dense_numpy(train["dense"], np.asarray(spec.dense_kinds))
    init_state = cold_state(spec, args.seed, x.mean(axis=0), x.std(axis=0))
    settings = LoopSettings(
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        weight_decay=0.0,
        eval_every_steps=0,
        seed=args.seed,
        prefetch_batches=args.prefetch_batches,
        shuffle_buffer_rows=args.shuffle_buffer_rows,
        cache_max_rows=0,
        chunk_batches=args.chunk_batches,
    )
    cpus = os.cpu_count() or 1
    cpus_per_worker = args.cpus_per_worker or max(1.0, (cpus - 1) / args.num_workers)
    result: dict = {
        "bench": "base_model.train",
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "cpus": cpus,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "embedding_dim": args.embedding_dim,
        "hidden": args.hidden,
        "users": args.users,
        "items": args.items,
        "num_workers": args.num_workers,
        "cpus_per_worker": cpus_per_worker,
        "prefetch_batches": args.prefetch_batches,
        "chunk_batches": args.chunk_batches,
        "generate_s": round(gen_s, 2),
    }

    if "bare" in modes:
        if device == "cpu":
            torch.set_num_threads(max(1, int(cpus_per_worker)))  # what a Ray worker gets
        outcome = bare_loop(spec, init_state, settings, train, valid, device=device)
        result["bare"] = _summary(outcome)
        print(f"bare: {result['bare']}", flush=True)

    ray_modes = [m for m in modes if m.startswith("ray_")]
    if ray_modes:
        import ray

        from protos.ray_local import init_local_ray
        from base_model.trainer import fit_with_ray

        init_local_ray(num_cpus=cpus)
        result["ray"] = ray.__version__
        enc_train = Encoded(train["user"], train["item"], train["dense"], train["label"])
        enc_valid = Encoded(valid["user"], valid["item"], valid["dense"], valid["label"])
        for mode in ray_modes:
            cache = args.rows if mode == "ray_cached" else 0
            cfg = BaseModelConfig(
                num_workers=args.num_workers,
                use_gpu=device == "cuda",
                cpus_per_worker=cpus_per_worker,
                batch_size=args.batch_size,
                prefetch_batches=args.prefetch_batches,
                shuffle_buffer_rows=args.shuffle_buffer_rows,
                cache_max_rows=cache,
                chunk_batches=args.chunk_batches,
            )
            mode_settings = LoopSettings(**{**settings.to_dict(), "cache_max_rows": cache})
            fit = fit_with_ray(
                cfg,
                spec,
                init_state,
                mode_settings,
                enc_train,
                enc_valid,
                run_name=f"bench-{mode}-{int(time.time())}",
            )
            result[mode] = {**_summary(fit.outcome), "fit_wall_s": round(fit.wall_seconds, 2)}
            print(f"{mode}: {result[mode]}", flush=True)
        ray.shutdown()

    if "score" in modes:
        import ray

        from protos.ray_local import init_local_ray

        init_local_ray(num_cpus=cpus)
        remote = ray.remote(num_cpus=1)(score_latency)
        result["score"] = ray.get(remote.remote(spec, init_state, args))
        print(f"score: {result['score']}", flush=True)
        ray.shutdown()

    if "bare" in result:
        for mode in ray_modes:
            result[f"{mode}_vs_bare"] = round(
                result[mode]["samples_per_s"] / result["bare"]["samples_per_s"], 3
            )
            result[f"{mode}_vs_bare_steady"] = round(
                result[mode]["steady_samples_per_s"] / result["bare"]["steady_samples_per_s"], 3
            )
    result["target"] = "ray_cached_vs_bare >= 0.9 on an H100"
    print(json.dumps(result), flush=True)
    return result


def score_latency(spec: ModelSpec, state: dict, args: argparse.Namespace) -> dict:
    """Median and p99 of ``BaseScorer.score`` for N candidates (10% of them unseen ids)."""
    import tempfile

    from base_model.artifact import BaseScorer, write_artifact

    with tempfile.TemporaryDirectory() as tmp:
        manifest = {
            "feature_service": "bench",
            "user_features": list(USER_FEATURES),
            "item_features": list(ITEM_FEATURES),
            "spec": spec.to_dict(),
            "oov_buckets": 1,
        }
        vocab_state = {k: v for k, v in state.items()}
        for side, n in (("user", args.users), ("item", args.items)):  # one hashed row per table
            vocab_state[f"{side}_emb.weight"] = state[f"{side}_emb.weight"][:n]
            vocab_state[f"{side}_bias.weight"] = state[f"{side}_bias.weight"][:n]
        write_artifact(
            tmp,
            manifest,
            vocab_state,
            [f"u{i}" for i in range(args.users - 1)],
            [f"i{i}" for i in range(args.items - 1)],
        )
        scorer = BaseScorer.load(tmp)
    rng = np.random.default_rng(args.seed)
    out = {}
    for n in (100, 1000):
        items = [f"i{k}" for k in rng.integers(0, int(args.items * 1.1), n)]
        uf = rng.gamma(2.0, 10.0, len(USER_FEATURES)).astype(np.float32)
        itf = rng.gamma(2.0, 10.0, (n, len(ITEM_FEATURES))).astype(np.float32)
        times = []
        for rep in range(1100):
            t0 = time.perf_counter()
            scorer.score("u7", items, uf, itf)
            if rep >= 100:
                times.append(time.perf_counter() - t0)
        out[f"n{n}_p50_us"] = round(float(np.median(times)) * 1e6)
        out[f"n{n}_p99_us"] = round(float(np.quantile(times, 0.99)) * 1e6)
    return out


def _summary(outcome) -> dict:  # noqa: ANN001 - a loop.FitOutcome
    return {
        "samples_per_s": round(outcome.samples_per_second),
        "steady_samples_per_s": round(outcome.steady_samples_per_second),
        "train_s": round(outcome.train_seconds, 3),
        "epoch_s": [round(s, 3) for s in outcome.epoch_seconds],
        "steps": outcome.steps,
        "val_logloss": round(outcome.curve[-1]["val_logloss"], 5) if outcome.curve else None,
        "load_s": round(outcome.load_seconds, 3),
        "device": outcome.device,
    }


if __name__ == "__main__":
    main()

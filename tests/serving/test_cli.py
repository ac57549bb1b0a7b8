"""The ``freshrank`` entry point: what it sets up around every subcommand."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving import cli


def test_a_command_gets_one_metrics_directory_for_its_processes_and_removes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Feast would leave a /tmp/feast_metrics_* per Ray worker; the command provides one
    directory that its processes inherit, and removes it when it ends."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROCESS_DIR", raising=False)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[str] = []
    with cli.feast_metrics_directory():
        seen.append(os.environ["PROMETHEUS_MULTIPROCESS_DIR"])
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == seen[0]
        assert Path(seen[0]).is_dir()
    assert not Path(seen[0]).exists()
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ


def test_a_metrics_directory_the_user_set_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", str(tmp_path))
    with cli.feast_metrics_directory():
        assert os.environ["PROMETHEUS_MULTIPROCESS_DIR"] == str(tmp_path)
    assert tmp_path.is_dir() and os.environ["PROMETHEUS_MULTIPROCESS_DIR"] == str(tmp_path)


def test_main_runs_a_subcommand_inside_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROCESS_DIR", raising=False)
    out = tmp_path / "sim.parquet"
    assert cli.main(["simulate", "--days", "1", "--out", str(out)]) == 0
    assert out.is_file()
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in os.environ


# -- user errors: one line on stderr, status 2, never a traceback ---------------------------
BAD_ARGUMENTS = [
    (["bogus"], "invalid choice"),
    (["simulate", "--days", "two"], "--days"),
    (["simulate", "--users", "0"], "n_users"),
    (["data", "load", "{tmp}/missing.parquet"], "not found"),
    (["data", "import", "ml-100k", "{tmp}/nowhere", "--out", "{tmp}/x.parquet"], "nowhere"),
    (["features", "apply", "--config", "{tmp}/missing.toml"], "missing.toml does not exist"),
    (["features", "compute"], "no events"),
    (["features", "materialize", "--end", "yesterday"], "bad time 'yesterday'"),
    (["train"], "has no event log"),
    (["train", "--as-of", "yesterday"], "bad time 'yesterday'"),
    (["train", "--every", "week"], "bad duration 'week'"),
    (["train", "--set", "epochs"], "KEY=VALUE"),
    (["train", "--trigger", "[1]"], "must be a JSON object"),
    (["train", "--trigger", "oops"], "not JSON"),
    (["serve", "--grpc-port", "http"], "--grpc-port"),
    (["status", "--timeout", "soon"], "--timeout"),
    (["demo", "--config", "{tmp}/bad.toml"], "grpc_prot"),
    (["backtest", "--events", "x", "--set", "tiers.x=1"], "unknown section"),
    (["backtest", "--events", "x", "--warmup", "two weeks"], "bad duration"),
    # off-policy evaluation
    (["evaluate", "--events", "{tmp}/missing.parquet", "--policy", "uniform"], "not found"),
    (["evaluate", "--events", "{tmp}/no-propensity.csv", "--policy", "uniform"], "lack propensity"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "greedy"], "unknown policy 'greedy'"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "base:base-0042"], "no version 'base-0042'"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "base:champion", "--candidates", "catalogue"],
     "use --candidates request"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "score:nope"], "no column 'nope'"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "marginals:{tmp}/logged.csv"], "use --candidates catalogue"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "uniform", "--level", "95"], "--level must be in (0, 1)"),
    (["evaluate", "--events", "{tmp}/logged.csv", "--policy", "uniform", "--interval", "jackknife"], "invalid choice"),
    (["online", "pause", "--reason", "x"], "invalid choice"),
    (["online", "disable"], "--reason"),
    (["online", "disable", "--reason", "x", "--target", "127.0.0.1:1", "--timeout", "3"], "UNAVAILABLE"),
    (["online", "disable", "--reason", "x", "--token-file", "{tmp}/no-token"], "cannot be read"),
    (["rollback", "feature", "--reason", "x"], "invalid choice"),
    (["rollback", "online", "--reason", "x", "--target", "127.0.0.1:1", "--timeout", "3"], "UNAVAILABLE"),
    # the live loop's controller and on-call commands
    (["run", "--max-cycles", "two"], "--max-cycles"),
    (["run", "--max-cycles", "-1"], "must be >= 0"),
    (["run", "--once", "--target", "nocolon"], "host:port"),
    (["run", "--once", "--config", "{tmp}/bad-controller.toml"], "unknown [controller] key(s): evry"),
    (["run", "--once", "--config", "{tmp}/slow.toml"], "bad duration 'weekly'"),
    (["canary", "stop", "--reason", "x"], "invalid choice"),
    (["canary", "abort"], "--reason"),
    (["canary", "abort", "--reason", "x", "--target", "127.0.0.1:1", "--timeout", "3"], "UNAVAILABLE"),
    (["rollback", "base", "--reason", "x", "--target", "127.0.0.1:1", "--timeout", "3"], "UNAVAILABLE"),
    (["rollback", "base", "--to", "base-0001", "--reason", "x", "--token-file", "{tmp}/no-token"],
     "cannot be read"),
    # exploration (serving.exploration)
    (["explore", "maybe", "--reason", "x"], "invalid choice"),
    (["explore", "on"], "--reason"),
    (["explore", "on", "--share", "lots", "--reason", "x"], "--share"),
    (["explore", "on", "--slots", "-1", "--reason", "x"], "--slots"),
    (["explore", "on", "--propensity-draws", "-1", "--reason", "x"], "--propensity-draws"),
    (["explore", "on", "--propensity-draws", "many", "--reason", "x"], "--propensity-draws"),
    (["explore", "on", "--share", "0.1", "--reason", "x", "--target", "127.0.0.1:1", "--timeout", "3"], "UNAVAILABLE"),
    # scaling the Ranker (serving.scaling): refused before Ray is asked anything
    (["scale"], "--ranker-replicas"),
    (["scale", "--ranker-replicas", "0"], "ranker_replicas must be in [1, 64], got 0"),
    (["scale", "--ranker-replicas", "two"], "'two' is not a whole number"),
    (["scale", "--ranker-replicas", "1.5"], "--ranker-replicas"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS, ids=[" ".join(a[:3]) for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_on_stderr_and_status_2(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "bad.toml").write_text("[serving]\ngrpc_prot = 1\n")
    (tmp_path / "bad-controller.toml").write_text("[controller]\nevry = '7d'\n")
    (tmp_path / "slow.toml").write_text("[controller]\nevery = 'weekly'\n")
    (tmp_path / "no-propensity.csv").write_text("user_id,item_id,ts,label,position\nu1,i1,0,1,0\n")
    (tmp_path / "logged.csv").write_text("user_id,item_id,ts,label,position,propensity\nu1,i1,0,1,0,0.5\n")
    monkeypatch.delenv("FRESHRANK_CONFIG", raising=False)
    monkeypatch.delenv("FRESHRANK_INGRESS_TOKEN", raising=False)
    monkeypatch.setenv("FRESHRANK_WORKSPACE", str(tmp_path / "ws"))
    status = cli.main([a.format(tmp=tmp_path) for a in argv])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "Traceback" not in err
    assert err.startswith("freshrank"), err


def test_status_of_no_server_is_one_line_and_bounded() -> None:
    """``freshrank status --target 127.0.0.1:1`` (nothing listens): the real console entry
    point prints one line that says what to do, exits non-zero, and does not hang."""
    import subprocess
    import sys
    import time

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serving.cli", "status", "--target", "127.0.0.1:1", "--timeout", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "UNAVAILABLE" in lines[0] and "freshrank serve" in lines[0] and "--target" in lines[0]
    assert time.monotonic() - started < 30


def test_help_is_status_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "$FRESHRANK_WORKSPACE" in capsys.readouterr().out


def test_simulate_without_out_writes_the_workspace_event_log(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert cli.main(["--workspace", str(ws), "simulate", "--days", "0.1", "--users", "20"]) == 0
    assert any((ws / "events").iterdir())


# -- one settings path: a [feature_store] value reaches the features, training and serving --
def test_ctr_prior_in_the_config_reaches_features_training_set_and_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``feature_store.ctr_prior`` set in the file: the computed features, the training set
    ``freshrank train`` builds, and the settings ``freshrank serve`` starts the app with all
    use it (the training fit itself is replaced: the rows it would get are what matters)."""
    import numpy as np
    import pyarrow.dataset as ds

    import base_model.training
    import serving.app

    prior, strength = 0.2, 20.0
    config = tmp_path / "freshrank.toml"
    config.write_text(f"[feature_store]\nctr_prior = {prior}\n")
    ws = tmp_path / "ws"
    root = ["--config", str(config), "--workspace", str(ws)]
    small = ["--days", "3", "--impressions-per-day", "600", "--users", "40", "--items-per-day", "40"]
    assert cli.main([*root, "simulate", *small]) == 0
    assert cli.main([*root, "features", "compute"]) == 0

    def smoothed(clicks: np.ndarray, impressions: np.ndarray) -> np.ndarray:
        return (clicks + strength * prior) / (impressions + strength)

    features = ds.dataset(ws / "features" / "user_stats", format="parquet").to_table()
    assert features.num_rows > 0
    clk, imp = (features.column(c).to_numpy() for c in ("user_clk_7d", "user_imp_7d"))
    np.testing.assert_allclose(features.column("user_ctr_7d").to_numpy(), smoothed(clk, imp), rtol=1e-5)

    seen: dict[str, object] = {}

    class Result:
        def to_dict(self) -> dict[str, str]:
            return {"status": "approved"}

    def fake_train(cfg: object, table: object, registry: object, **kwargs: object) -> Result:
        seen["table"] = table
        return Result()

    monkeypatch.setattr(base_model.training, "train_base_model", fake_train)
    assert cli.main([*root, "train", "--backend", "local"]) == 0
    table = seen["table"]
    for entity, window in (("user", "7d"), ("item", "24h")):
        clk = table.column(f"{entity}_clk_{window}").to_numpy()
        imp = table.column(f"{entity}_imp_{window}").to_numpy()
        ctr = table.column(f"{entity}_ctr_{window}").to_numpy()
        np.testing.assert_allclose(ctr, smoothed(clk, imp), rtol=1e-5)
    assert np.isclose(table.column("user_ctr_7d").to_numpy(), prior).any()  # no history: the prior

    def fake_start(settings: object) -> None:
        seen["settings"] = settings
        raise KeyboardInterrupt  # stop before anything starts

    monkeypatch.setattr(serving.app, "start", fake_start)
    assert cli.main([*root, "serve"]) == 130
    assert seen["settings"].feature_store.ctr_prior == prior
    assert seen["settings"].workspace == ws


def test_explore_sends_propensity_draws_only_when_given_and_prints_the_reply(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real gRPC server that records what ``freshrank explore`` sends."""
    from concurrent import futures

    import grpc

    from protos.freshrank.v1 import ranking_pb2 as pb
    from protos.freshrank.v1 import ranking_pb2_grpc

    seen: list[pb.SetExplorationRequest] = []

    class Recorder(ranking_pb2_grpc.RankerServicer):
        def SetExploration(self, request: pb.SetExplorationRequest, context: object) -> pb.AdminReply:
            seen.append(request)
            return pb.AdminReply(action="set_exploration", current="on")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    ranking_pb2_grpc.add_RankerServicer_to_server(Recorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    monkeypatch.delenv("FRESHRANK_INGRESS_TOKEN", raising=False)
    try:
        base = ["explore", "on", "--reason", "mc", "--actor", "alice", "--target", f"127.0.0.1:{port}"]
        assert cli.main([*base, "--propensity-draws", "0", "--samples", "32"]) == 0
        assert cli.main(base) == 0
    finally:
        server.stop(None)
    assert '"action": "set_exploration"' in capsys.readouterr().out
    given, left_out = seen
    assert given.HasField("propensity_draws") and given.propensity_draws == 0 and given.samples == 32
    assert not left_out.HasField("propensity_draws") and not left_out.HasField("samples")

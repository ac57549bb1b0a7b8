"""A log that cannot train a click model is refused in one line, before any work starts.

A click stream without its impressions (every label 1) has nothing to contrast the clicks
with: every fit would learn a constant. ``freshrank backtest`` and ``freshrank demo
--events`` say so, and what the log would need, instead of computing features, starting
Ray and failing (or "succeeding") later.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from feature_store.errors import UntrainableEventsError
from feature_store.events_file import check_trainable, load_events
from serving import cli


def events_csv(path: Path, label: str, rows: int = 60) -> Path:
    lines = ["user_id,item_id,ts,label"]
    lines += [f"u{i % 7},i{i % 11},{1_700_000_000 + i * 3600 * 9},{label}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_log_of_one_label_is_refused_and_told_what_it_needs(tmp_path: Path) -> None:
    clicks = load_events(events_csv(tmp_path / "clicks.csv", "1"))
    with pytest.raises(UntrainableEventsError) as only_clicks:
        check_trainable(clicks, source="clicks.csv")
    message = str(only_clicks.value)
    assert message.startswith("clicks.csv cannot train a click model: all 60 events are positives")
    assert "impressions that were not clicked" in message and "label 0" in message
    assert "\n" not in message and isinstance(only_clicks.value, ValueError)
    shown = load_events(events_csv(tmp_path / "shown.csv", "0"))
    with pytest.raises(UntrainableEventsError, match="none of its 60 events is a positive"):
        check_trainable(shown, source="shown.csv")
    with pytest.raises(UntrainableEventsError, match="holds no events"):
        check_trainable(clicks.slice(0, 0), source="empty")
    # Both labels, or soft labels in between: trainable, returned as given.
    mixed = clicks.set_column(
        clicks.schema.get_field_index("label"), "label",
        pa.array([float(i % 2) for i in range(60)], pa.float32()),
    )
    assert check_trainable(mixed) is mixed
    soft = mixed.set_column(mixed.schema.get_field_index("label"), "label",
                            pa.array([0.5] * 60, pa.float32()))
    assert check_trainable(soft) is soft


@pytest.mark.parametrize(
    "argv",
    [
        ["backtest", "--events", "{events}", "--out", "{tmp}/out", "--quiet", "--warmup", "2d"],
        ["demo", "--events", "{events}", "--workspace", "{tmp}/demo"],
    ],
    ids=["backtest", "demo"],
)
def test_backtest_and_demo_refuse_a_click_stream_without_impressions_in_one_line(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = events_csv(tmp_path / "clicks.csv", "1")
    monkeypatch.delenv("FRESHRANK_CONFIG", raising=False)
    monkeypatch.setenv("FRESHRANK_WORKSPACE", str(tmp_path / "ws"))
    status = cli.main([a.format(events=events, tmp=tmp_path) for a in argv])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert status == 2
    assert "Traceback" not in err
    # One line says why (the demo's progress line "loading events from ..." may precede it).
    assert [line for line in lines if "error" in line] == [lines[-1]], err
    assert all(line.startswith("[demo] loading events") for line in lines[:-1]), err
    assert lines[-1].startswith(f"freshrank {argv[0]}: error: {events} cannot train a click model: "
                                "all 60 events are positives (label 1)")
    assert not (tmp_path / "out" / "workspace").exists()  # no features were computed

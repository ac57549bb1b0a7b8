"""README's backtest table is the committed reports' evidence, not typed by hand
(``bench/readme_table.py``)."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _generator():  # noqa: ANN202 - bench/ is scripts, not a package
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "bench" / "readme_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_what_the_committed_reports_say() -> None:
    generator = _generator()
    readme = (ROOT / "README.md").read_text()
    block = readme.split(generator.START, 1)[1].split(generator.END, 1)[0].strip()
    assert block == generator.table(), "run: python bench/readme_table.py --write README.md"


def test_a_verdict_is_printed_as_the_report_judged_it(tmp_path: pathlib.Path) -> None:
    generator = _generator()
    policies = {name: {"ne": ne} for name, ne in
                [("constant", 1.0), ("item_rate", 0.99), ("base_only", 0.98), ("hybrid", 0.97),
                 ("daily_fresh_new", 0.975)]}
    pairs = {"hybrid - base_only": {"ne_delta": -0.01, "ci95": [-0.02, 0.001], "verdict": "not distinguishable"}}
    report = {"span": {"events_evaluated": 1234}, "production": {"hybrid_online_share": 0.5},
              "evidence": {"policies": policies, "pairs": pairs}}
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "report.json").write_text(json.dumps(report))
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "report.json").write_text(json.dumps({"span": {}}))
    table = generator.table(tmp_path)
    row = next(line for line in table.splitlines() if line.startswith("| simulator"))
    assert "| 1,234 | 1.0000 | 0.9900 | 0.9800 | 0.9700 | 0.9750 | 50% |" in row
    assert "-0.0100 (-0.0200 .. +0.0010) not distinguishable" in row
    assert row.endswith("| — | — |")  # pairs the report does not hold
    assert "Not re-run under issue 18's rules" in table and "ml-100k" in table.splitlines()[-1]


@pytest.mark.parametrize("missing", ["<!-- backtest-table -->", "<!-- /backtest-table -->"])
def test_a_readme_without_both_markers_is_refused(tmp_path: pathlib.Path, missing: str) -> None:
    generator = _generator()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- backtest-table -->\nold\n<!-- /backtest-table -->\n".replace(missing, ""))
    with pytest.raises(ValueError):
        generator.rewrite(readme, tmp_path)

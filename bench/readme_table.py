"""README's backtest table, generated from the committed reports (``bench/backtest/*/report.json``).

Only reports that carry issue 18's ``evidence`` (normalised entropy with user-clustered
intervals, rule-3 verdicts) are tabled; the rest are named below the table as not re-run.
The README must say what the intervals say, so its table is this script's output, never
typed by hand: ``python bench/readme_table.py --write README.md`` rewrites the block
between ``<!-- backtest-table -->`` and ``<!-- /backtest-table -->``, and
``tests/backtest/test_readme_table.py`` fails when the two differ.
"""

from __future__ import annotations

import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent / "backtest"
START, END = "<!-- backtest-table -->", "<!-- /backtest-table -->"
ORDER = ("sim", "sim-fresh", "ml-100k", "open-bandit", "ml-latest-small", "amazon-magazine")
NAMES = {"sim": "simulator (default)", "sim-fresh": "simulator (learnable freshness)"}
#: The NE columns, then the paired differences judged (rule 3 of issue 18).
COLUMNS = ("constant", "item_rate", "base_only", "hybrid", "daily_fresh_new")
PAIRS = ("hybrid - base_only", "hybrid - item_rate", "hybrid - daily_fresh_new")


def _ne(policy: dict) -> str:
    return f"{policy['ne']:.4f}"


def _pair(pair: dict | None) -> str:
    if pair is None:
        return "—"
    lo, hi = pair["ci95"]
    return f"{pair['ne_delta']:+.4f} ({lo:+.4f} .. {hi:+.4f}) {pair['verdict']}"


def table(root: pathlib.Path = ROOT) -> str:
    """The markdown block (without the markers)."""
    rows, skipped = [], []
    for name in ORDER:
        path = root / name / "report.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        evidence = report.get("evidence")
        if not evidence:
            skipped.append(name)
            continue
        policies = evidence["policies"]
        share = report.get("production", {}).get("hybrid_online_share")
        cells = [NAMES.get(name, name), f"{report['span']['events_evaluated']:,}"]
        cells += [_ne(policies[c]) if c in policies else "—" for c in COLUMNS]
        cells.append(f"{share:.0%}" if share is not None else "—")
        cells += [_pair(evidence["pairs"].get(p)) for p in PAIRS]
        rows.append("| " + " | ".join(cells) + " |")
    head = ("| dataset | events | NE constant | item_rate | base_only | **hybrid** (served) "
            "| daily_fresh_new | layer served | hybrid − base_only | hybrid − item_rate "
            "| hybrid − daily_fresh_new |")
    lines = [head, "|---|---:|" + "---:|" * (len(COLUMNS) + 1) + "---|" * len(PAIRS), *rows]
    if skipped:
        lines += ["", "Not re-run under issue 18's rules (their reports are issue 8's, without "
                  "intervals): " + ", ".join(skipped) + "."]
    return "\n".join(lines)


def rewrite(readme: pathlib.Path, root: pathlib.Path = ROOT) -> bool:
    """Replace the README's block by ``table()``; True when it changed."""
    text = readme.read_text()
    if START not in text or END not in text.split(START, 1)[-1]:
        raise ValueError(f"{readme} lacks the markers {START} ... {END}")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{table(root)}\n{END}{after}"
    readme.write_text(new)
    return new != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=pathlib.Path, help="rewrite this README's table")
    args = parser.parse_args()
    if args.write:
        print("rewritten" if rewrite(args.write) else "unchanged")
    else:
        print(table())


if __name__ == "__main__":
    main()

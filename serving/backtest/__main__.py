"""``python -m serving.backtest --events FILE ...``: ``freshrank backtest`` under another name."""

import sys

from serving.cli import main

sys.exit(main(prog="python -m serving.backtest", command="backtest"))

"""``python -m serving.backtest --events FILE ...`` (the same as ``freshrank backtest``)."""

import sys

from serving.backtest.cli import main

sys.exit(main())

"""Off-policy evaluation (issue 20): how a candidate ranking policy would have done on the
requests of a log collected by another, from the propensities logged with it.

- ``logdata``: an events table as a bandit log (requests, slots, clicks, propensities,
  candidates) and the item-position assumption the estimators rest on;
- ``policies``: candidate policies as item-position marginals; ``candidates``: the ones the
  CLI names (``uniform``, ``logged``, ``base:VERSION``, ``score:COLUMN``, ``marginals:FILE``);
  ``marginals``: a context-free logging policy read back from its own log (Open Bandit's BTS);
- ``estimators``: IPS, SNIPS, DR and the effective sample size; ``reward_model``: DR's
  cross-fitted click model; ``intervals``: bootstrap over requests and the CLT interval;
- ``evaluate``: one report; ``cli``: ``freshrank evaluate``; ``simulated``: logs on the
  simulator with known true values.
"""

"""The base tier: a PyTorch ranker trained weekly as a Ray Train job, gated into the registry.

Modules (import what you need; this file imports nothing heavy):

- ``config``: ``BaseModelConfig``.
- ``artifact``: ``BaseScorer`` / ``BaseScores``, the serving path (NumPy, no torch).
- ``train``: ``train_base_model`` and the ``python -m base_model.train`` Ray job entry point.
- ``gates``, ``triggers``, ``warm``, ``drift``: what decides whether, when and from what to train.
- ``model``, ``loop``, ``trainer``: the torch model, its training loop, the Ray Train fit.
- ``cli``: ``freshrank train``.
"""

__all__ = ["artifact", "cli", "config", "errors", "train"]

"""The base tier: a PyTorch ranker trained weekly as a Ray Train job, gated into the registry.

Modules (import what you need; this file imports nothing heavy):

- ``config``: ``BaseModelConfig``.
- ``artifact``: ``BaseScorer`` / ``BaseScores``, the serving path (NumPy, no torch).
- ``training``: ``train_base_model``; ``train``: the ``python -m base_model.train`` Ray job
  entry point, which hands its arguments to ``freshrank train`` (``serving/train_command.py``:
  the command composes the feature store's event log and this tier, so it lives in the
  composition root).
- ``gates``, ``triggers``, ``warm``, ``drift``: what decides whether, when and from what to train.
- ``model``, ``loop``, ``ray_loop``, ``trainer``: the torch model, its training loop (bare
  and as a Ray Train worker), the Ray Train fit; ``fit_types``: what a fit takes and returns.
- ``lineage``: what a version records about itself.
"""

__all__ = ["artifact", "config", "errors", "train", "training"]

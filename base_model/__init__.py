"""The base tier: a PyTorch ranker trained weekly as a Ray Train job, with a registry and gates.

Modules (import what you need; this file imports nothing heavy):

- ``config``: ``BaseModelConfig``.
- ``artifact``: ``BaseScorer`` / ``BaseScores``, the serving path (NumPy, no torch).
- ``registry``: ``ModelRegistry`` (stdlib only; tiers "base" and "online").
- ``training``: ``train_base_model``; ``train``: the ``python -m base_model.train`` Ray job
  entry point (``freshrank train``); ``sources``: where its rows and training time come from.
- ``gates``, ``triggers``, ``warm``, ``drift``: what decides whether, when and from what to train.
- ``model``, ``loop``, ``ray_loop``, ``trainer``: the torch model, its training loop (bare
  and as a Ray Train worker), the Ray Train fit; ``fit_types``: what a fit takes and returns.
- ``lineage``: what a version records about itself.
- ``cli``: ``freshrank train``.
"""

__all__ = ["artifact", "cli", "config", "errors", "registry", "train", "training"]

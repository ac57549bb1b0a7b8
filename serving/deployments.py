"""The Ray Serve deployments: a gRPC ingress that ranks (``ranker_deployment``), and the
online learner behind it (``learner_deployment``).

Composition follows Serve's pattern: the learner's handle is passed into the ingress's
constructor and wired once with ``.bind()`` (``serving.app.build_app``).

Ranker (ingress, ``freshrank.v1.Ranker``; method names equal the rpc names)
    Rank: validate -> ``HybridRanker`` (features, base, online correction, sort) -> reply.
    What was shown is appended to the replica's served log before the reply
    (``serving.served_log``); the learner follows the logs and reads them before each
    feedback batch, so it always knows an impression before its click.
    A background task polls the learner for newer online weights and swaps them in.
    Every rpc goes through one door (``serving.ingress.rpc``): bad input is
    ``INVALID_ARGUMENT`` naming the field, a ``FreshrankError`` its own status, anything
    else ``INTERNAL`` with a short message (logged here with the request id).
Learner
    Wraps ``online_layer.learner.OnlineLearner`` for the champion base; takes feedback
    (logged, fsynced, before ``accepted`` is answered), pushes fresh item counters to the
    feature store, persists ready snapshots; on start replays what its snapshot lacks.
"""

from __future__ import annotations

from serving.learner_deployment import Learner
from serving.ranker_deployment import Ranker

__all__ = ["Learner", "Ranker"]

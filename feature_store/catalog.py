"""The feature contract between Feast, the base model and the online layer, in one place.

Names and order here are what the model sees: ``USER_FEATURES`` and ``ITEM_FEATURES`` are the
columns of every training set (``feature_store.training_set``) and the arrays of every online
lookup (``feature_store.online``), in this order. The Feast declarations
(``feature_store/definitions.py``) are built from these names, and the FeatureService named
``FEATURE_SERVICE_NAME`` groups exactly them; every model version records that name.

This module imports nothing heavy (no Feast), so every tier can use it.
Adding a feature: append it here, compute it in ``feature_store.compute``, bump
``FEATURE_SERVICE_VERSION`` (a model trained on the old service keeps reading the old one).
"""

from __future__ import annotations

FEATURE_SERVICE_VERSION = 1
FEATURE_SERVICE_NAME = f"ranker_v{FEATURE_SERVICE_VERSION}"

# Per-user activity, from events strictly before the row's time.
USER_FEATURES: tuple[str, ...] = (
    "user_imp_7d",
    "user_clk_7d",
    "user_ctr_7d",
    "user_imp_30d",
    "user_clk_30d",
    "user_ctr_30d",
)

# Per-item popularity and age, from events strictly before the row's time. The 1 h counters
# are also pushed fresh by the online loop (``feature_store.push``).
ITEM_FEATURES: tuple[str, ...] = (
    "item_imp_1h",
    "item_clk_1h",
    "item_ctr_1h",
    "item_imp_24h",
    "item_clk_24h",
    "item_ctr_24h",
    "item_imp_7d",
    "item_clk_7d",
    "item_ctr_7d",
    "item_age_hours",
)

# The item features that change within minutes: pushed as feedback arrives, and fed to the
# online correction layer as its "fresh" dense inputs.
FRESH_ITEM_FEATURES: tuple[str, ...] = ("item_imp_1h", "item_clk_1h", "item_ctr_1h")

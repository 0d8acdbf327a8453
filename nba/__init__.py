"""nba: an open-source Next-Best-Action platform.

Importing `nba` is cheap and has no side effects; heavy libraries (Feast, MLflow, BentoML,
Evidently, XGBoost) are imported inside the functions that use them.
"""

__version__ = "0.1.0"

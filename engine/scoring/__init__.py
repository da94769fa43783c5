"""Scoring: exact blocked all-pairs (``allpairs``), photo→listing aggregation (``aggregate``), geo/time priors
(``geo``), attribute agreement (``attributes``), fusion and calibration (``fuse``), candidate blocking
(``blocking``) and retrieval metrics (``metrics``). Pure torch/numpy: no storage, no models."""

"""Scoring: exact blocked all-pairs (``allpairs``), photo→listing aggregation (``aggregate``), geo/time priors
(``geo``), attribute agreement (``attributes``), fusion and calibration (``fuse``), candidate blocking
(``blocking``), the sides built from listings and detection rows (``sides``), the top-k of each block (``blocks``)
and retrieval metrics (``metrics``). Pure torch/numpy/Arrow: no storage, no models."""

"""Gain predictors (see :mod:`bench.predictors.base`); one module per predictor."""

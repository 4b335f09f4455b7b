"""Reusable network architectures for the trained datasets (written here in torch, documented against their papers).

- :mod:`bench.models.autoformer`: Autoformer (Wu et al., NeurIPS'21) split for hard parameter sharing: a shared
  embedding + encoder and one decoder per task (the ETTm1 setup of the task-grouping papers).
"""

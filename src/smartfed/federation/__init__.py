"""Federated SmartFed on Flower.

Flower-free: ``config`` (RunConfig, presets), ``core`` (local training, aggregation maths),
``runtime`` (per-process model/pool/data), ``rundir`` (run directory and checkpoints).
Flower adapters: ``client_app``, ``server_app``, ``strategy``, ``inprocess`` (Ray-free Grid),
``runner`` (engine selection), ``settings`` (run config transport).
"""

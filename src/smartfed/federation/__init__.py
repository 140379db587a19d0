"""The Flower layer: the only package that imports Flower.

``client_app`` / ``server_app`` (the two Flower apps), ``strategy`` (FedAvg over the method's
payload plus its server logic; hands each round's report to the run recorder), ``inprocess``
(a Ray-free Grid), ``flower_compat`` (every use of Flower internals, behind a version check),
``settings`` (typed run-config keys), ``wire`` (payload precision on the wire) and ``runner``
(engine selection). Everything Flower-free lives below, in ``smartfed.engine``.
"""

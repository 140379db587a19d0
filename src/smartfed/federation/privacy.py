"""The strategy's side of central DP (``--dp_noise_multiplier``): Flower records in and out.

The mechanism, its accounting and what ε covers are in :mod:`smartfed.engine.privacy`. Flower
1.42 ships a wrapper for the same mechanism (``DifferentialPrivacyServerSideFixedClipping``), but
it does not fit SmartFed's strategy:

- its noise comes from NumPy's global generator, so a resumed run would add other noise than an
  uninterrupted one, and a known seed would let anyone subtract it (here: a secret key kept in
  the run directory, and the round);
- it clips the replies before the strategy decodes them from the wire dtype and drops failed or
  non-finite ones, and skips the whole round when any client failed;
- it averages by number of examples, with noise calibrated to an equal-weight mean, and its
  accountant requires FedAvg's own ``aggregate_train`` and no amplification by sampling.

So the strategy keeps its reply checks and calls :func:`private_aggregate` on the usable
replies instead of FedAvg's weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Array, ArrayRecord, Message

from smartfed.engine.privacy import CentralPrivacy


def private_aggregate(
    privacy: CentralPrivacy,
    server_round: int,
    global_arrays: ArrayRecord,
    replies: Sequence[Message],
) -> ArrayRecord:
    """The round's new global state under central DP: ``global_arrays`` (what the round sent,
    float32) plus the clipped updates of ``replies`` (decoded to float32, in partition order)
    summed over ``sample_clients``, plus Gaussian noise from the round's secret stream."""
    names = list(global_arrays.keys())
    reference = [global_arrays[name].numpy() for name in names]
    client_states = []
    for reply in replies:
        arrays = reply.content["arrays"]
        client_states.append([arrays[name].numpy() for name in names])
    values = privacy.aggregate(server_round, reference, client_states)
    return ArrayRecord({name: Array(value) for name, value in zip(names, values, strict=True)})

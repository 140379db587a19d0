"""Central differential privacy of the communicated arrays: clipping, Gaussian noise, accounting.

With ``--dp_noise_multiplier`` σ and ``--dp_clip_norm`` C, the server replaces FedAvg's
weighted mean by the Gaussian mechanism of DP-FedAvg (McMahan et al., ICLR 2018), user level
(one client = one user):

    new global = global + (Σ_i clip_C(Δ_i)) / n + N(0, (σ·C/n)² I)

where ``Δ_i`` is client i's update (its arrays minus the global state it was sent, all arrays
as one vector), ``clip_C`` scales it down to L2 norm C when longer, and ``n`` is
``sample_clients``: a fixed denominator, so a client that drops out lowers the sum instead of
raising any other client's weight. Every client weighs the same (not its number of examples):
that is what bounds one client's influence by C.

The privacy spent after t rounds, ε at ``--dp_delta``, comes from Google's ``dp-accounting``
(RDP accountant, integer orders 2..64 and sparser ones up to 1024), for one of three
accountings (``--dp_accounting``):

- ``without_replacement`` (default): what the strategy does, a sample of exactly n of the N
  clients without replacement each round, under the replace-one relation (N is public; one
  client's data replaced by anything else). Replacing a client changes the clipped sum by up to
  2C, so the accountant gets the noise multiplier σ/2 (Wang, Balle and Kasiviswanathan, 2019).
- ``poisson``: the usual DP-FedAvg accounting, add-or-remove one client with Poisson sampling at
  q = n/N. An approximation here, since the strategy samples exactly n clients.
- ``none``: add-or-remove one client, no amplification by sampling: holds even for someone who
  knows which clients were sampled (metrics.jsonl lists them).

The first two assume that whoever looks at the released states does not know which clients
were sampled; metrics.jsonl and ``dp_key.json`` must then stay with the server. ε under
replace-one is not comparable with ε under add-or-remove (replacing is removing, then adding).

What ε covers: only the arrays the server releases (each round's global state, which the next
clients receive, and final/). Not covered, and sent to the server in the clear: each client's
number of examples, training loss and step time, and SmartFed's importance statistics and
token counts. None of them steers what the server broadcasts: EEQA, whose quota table
(broadcast each round) would be computed from the importance statistics, is refused under DP
(``SmartFedSettings.dp_refusal``), so SmartFed runs DP with uniform K (``--no-enable_eeqa``)
or ``--dense``, and nothing but the private state leaves the server.

The noise, and under DP the choice of clients (:meth:`CentralPrivacy.sampling_seed`), come from
a secret key drawn from the operating system when the run starts and kept in the run directory
(``dp_key.json``, readable by its owner only), not from ``--seed``: anyone who could recompute
the noise could subtract it. A resumed run reads the same key, so it adds the same noise and
samples the same clients as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smartfed.engine.rundir import DP_KEY
from smartfed.errors import ConfigError, SmartFedError
from smartfed.utils.io import storage_errors

if TYPE_CHECKING:
    from smartfed.engine.config import RunConfig

ACCOUNTINGS = ("without_replacement", "poisson", "none")
DEFAULT_ACCOUNTING = "without_replacement"
DEFAULT_DELTA = 1e-5
# Integer RDP orders, like dp-accounting's defaults without the fractional ones (their series
# does not always converge for small σ): exact for both subsampled Gaussians, and what the
# tests recompute. Sampling without replacement costs O(α²) per order up to 256, so the orders
# thin out above 64.
RDP_ORDERS = (*range(2, 65), 80, 96, 128, 192, 256, 512, 1024)
KEY_FILE = DP_KEY  # the run directory's name for it
# What summary.json says ε covers; the module docstring has the details.
COVERAGE = (
    "epsilon covers the arrays the server releases (each round's global state and final/) "
    "only; clients' example counts, training losses, step times and SmartFed's importance "
    "statistics and token counts reach the server unprivatised and steer nothing it releases "
    "(EEQA, which would broadcast quotas computed from them, is refused under DP)"
)


class PrivacyError(SmartFedError):
    """Central DP cannot be applied to this round's arrays."""


def check_available() -> None:
    """Refuse DP in one line when the accountant library is not installed."""
    from importlib.util import find_spec

    if find_spec("dp_accounting") is None:
        raise ConfigError(
            "--dp_noise_multiplier needs the dp-accounting package: pip install 'smartfed[dp]'"
        )


def epsilon_spent(
    noise_multiplier: float,
    sample_clients: int,
    num_clients: int,
    rounds: int,
    delta: float,
    accounting: str = DEFAULT_ACCOUNTING,
) -> float:
    """ε at ``delta`` after ``rounds`` releases of the clipped-sum Gaussian mechanism.

    ``noise_multiplier`` is σ of the mechanism (noise std σC on the sum of updates clipped to
    C); the sampling is ``sample_clients`` of ``num_clients`` per round, as ``accounting``
    describes (see the module docstring). 0 before the first round.
    """
    if rounds == 0:
        return 0.0
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    relation = dp_accounting.NeighboringRelation
    if accounting == "without_replacement":
        # Replace-one moves the clipped sum by up to 2C: σ relative to that sensitivity is σ/2.
        accountant = RdpAccountant(RDP_ORDERS, relation.REPLACE_ONE)
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            num_clients, sample_clients, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        )
    elif accounting == "poisson":
        accountant = RdpAccountant(RDP_ORDERS, relation.ADD_OR_REMOVE_ONE)
        event = dp_accounting.PoissonSampledDpEvent(
            sample_clients / num_clients, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
    elif accounting == "none":
        accountant = RdpAccountant(RDP_ORDERS, relation.ADD_OR_REMOVE_ONE)
        event = dp_accounting.GaussianDpEvent(noise_multiplier)
    else:
        raise ConfigError(
            f"--dp_accounting must be one of {', '.join(ACCOUNTINGS)}, got {accounting!r}"
        )
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def noise_multiplier_for(
    epsilon: float,
    sample_clients: int,
    num_clients: int,
    rounds: int,
    delta: float = DEFAULT_DELTA,
    accounting: str = DEFAULT_ACCOUNTING,
) -> float:
    """The smallest σ (to 0.1 %) whose ε after ``rounds`` rounds is at most ``epsilon``."""
    low, high = 0.05, 0.1
    while epsilon_spent(high, sample_clients, num_clients, rounds, delta, accounting) > epsilon:
        low, high = high, high * 2
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        spent = epsilon_spent(mid, sample_clients, num_clients, rounds, delta, accounting)
        low, high = (mid, high) if spent > epsilon else (low, mid)
    return high


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float]:
    """``update`` (all arrays as one vector) scaled down to L2 norm ``clip_norm`` when longer;
    also its norm before clipping."""
    norm = math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update))
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(a, dtype=np.float64) * factor for a in update], norm


def private_mean(
    reference: Sequence[np.ndarray],
    client_states: Sequence[Sequence[np.ndarray]],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """``reference`` plus the clipped updates' sum over ``expected_clients`` plus Gaussian noise
    of std ``noise_multiplier * clip_norm / expected_clients`` on every coordinate.

    ``reference`` is the global state the clients were sent; each of ``client_states`` holds
    the same arrays in the same order. Arrays come back in ``reference``'s dtypes (floating).
    """
    for array in reference:
        if not np.issubdtype(np.asarray(array).dtype, np.floating):
            raise PrivacyError(
                f"central DP adds noise to floating-point arrays only; the global state has "
                f"a {np.asarray(array).dtype} array"
            )
    total = [np.zeros(np.shape(a), dtype=np.float64) for a in reference]
    for state in client_states:
        update = [np.asarray(s, dtype=np.float64) - np.asarray(r, np.float64)
                  for s, r in zip(state, reference, strict=True)]  # fmt: skip
        clipped, _ = clip_update(update, clip_norm)
        for acc, part in zip(total, clipped, strict=True):
            acc += part
    std = noise_multiplier * clip_norm / expected_clients
    result = []
    for ref, acc in zip(reference, total, strict=True):
        noise = rng.normal(0.0, std, size=np.shape(ref))
        value = np.asarray(ref, np.float64) + acc / expected_clients + noise
        result.append(value.astype(np.asarray(ref).dtype))
    return result


def load_or_create_key(run_dir: str | os.PathLike[str]) -> int:
    """The run's secret noise key: read from ``run_dir/dp_key.json``, or drawn from the
    operating system and written there (owner-readable only) when the run has none yet."""
    path = Path(run_dir) / KEY_FILE
    if path.is_file():
        try:
            return int(json.loads(path.read_text(encoding="utf-8"))["key"], 16)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is unreadable ({exc}); it holds the run's DP noise key"
            ) from None
    key = secrets.randbits(128)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{KEY_FILE}.", dir=path.parent)  # mode 0600
    try:
        with storage_errors(path):
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump({"key": f"{key:032x}"}, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return key


@dataclass(frozen=True)
class CentralPrivacy:
    """A run's central-DP settings, and what follows from them (noise, streams, ε)."""

    noise_multiplier: float
    clip_norm: float
    delta: float
    accounting: str
    sample_clients: int
    num_clients: int
    key: int = 0

    @classmethod
    def from_config(
        cls, config: RunConfig, key_dir: str | os.PathLike[str] | None = None
    ) -> CentralPrivacy | None:
        """The run's DP settings, or None when ``--dp_noise_multiplier`` is not set; with
        ``key_dir`` (the run directory), its secret key (:func:`load_or_create_key`)."""
        if config.dp_noise_multiplier is None:
            return None
        key = load_or_create_key(key_dir) if key_dir is not None else 0
        assert config.dp_clip_norm is not None and config.dp_delta is not None
        return cls(
            noise_multiplier=config.dp_noise_multiplier,
            clip_norm=config.dp_clip_norm,
            delta=config.dp_delta,
            accounting=config.dp_accounting or DEFAULT_ACCOUNTING,
            sample_clients=config.sample_clients,
            num_clients=config.num_clients,
            key=key,
        )

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on each coordinate of the new global state."""
        return self.noise_multiplier * self.clip_norm / self.sample_clients

    def noise_rng(self, server_round: int) -> np.random.Generator:
        """The noise of one round: a function of the secret key and the (absolute) round."""
        return np.random.default_rng([self.key, server_round, 0])

    def sampling_seed(self, server_round: int) -> list[int]:
        """Seed of the round's client sample: secret too, or sampling would not amplify."""
        return [self.key, server_round, 1]

    def aggregate(
        self,
        server_round: int,
        reference: Sequence[np.ndarray],
        client_states: Sequence[Sequence[np.ndarray]],
    ) -> list[np.ndarray]:
        """The round's private global state (see :func:`private_mean`)."""
        return private_mean(
            reference,
            client_states,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_clients=self.sample_clients,
            rng=self.noise_rng(server_round),
        )

    def epsilon(self, rounds: int) -> float:
        return epsilon_spent(
            self.noise_multiplier,
            self.sample_clients,
            self.num_clients,
            rounds,
            self.delta,
            self.accounting,
        )

    def round_fields(self, rounds: int) -> dict[str, float]:
        """What a metrics row records: ε spent after ``rounds`` rounds, at δ."""
        return {"dp_epsilon": self.epsilon(rounds), "dp_delta": self.delta}

    def describe(self, rounds: int) -> dict[str, Any]:
        """summary.json's ``privacy`` block."""
        return {
            "mechanism": "gaussian, central, user-level (clip each client's update, add noise "
            "to the mean of sample_clients)",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "noise_std": self.noise_std,
            "accounting": self.accounting,
            "accountant": "dp-accounting RDP",
            "sampling_rate": self.sample_clients / self.num_clients,
            "rounds": rounds,
            "epsilon": self.epsilon(rounds),
            "delta": self.delta,
            "covers": COVERAGE,
        }

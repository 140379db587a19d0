"""Central DP's math: ε recomputed from the published formulas, clipping, noise, the secret key."""

from __future__ import annotations

import json
import math
import stat

import numpy as np
import pytest

from smartfed.engine.config import RunConfig
from smartfed.engine.privacy import (
    COVERAGE,
    KEY_FILE,
    RDP_ORDERS,
    CentralPrivacy,
    clip_update,
    epsilon_spent,
    load_or_create_key,
    noise_multiplier_for,
    private_mean,
)
from smartfed.errors import ConfigError

DELTA = 1e-5


# ---------------------------------------------------------------- ε, recomputed from scratch
def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _rdp_poisson_gaussian(q: float, sigma: float, order: int) -> float:
    """RDP of the Poisson-subsampled Gaussian at an integer order (Mironov, Talwar and Zhang,
    2019, §3.3): log Σ_k C(α,k) (1-q)^(α-k) q^k exp((k²-k)/(2σ²)) / (α-1)."""
    terms = []
    for k in range(order + 1):
        log_binomial = math.lgamma(order + 1) - math.lgamma(k + 1) - math.lgamma(order - k + 1)
        log_q = k * math.log(q) if k else 0.0
        log_rest = (order - k) * math.log1p(-q) if order - k else 0.0
        terms.append(log_binomial + log_q + log_rest + (k * k - k) / (2 * sigma**2))
    return _logsumexp(terms) / (order - 1)


def _epsilon_from_rdp(rdp_of_order, rounds: int, delta: float) -> float:
    """(ε, δ) from RDP, Balle et al. 2020 (arXiv 2004.00010), Proposition 12:
    ε = T·RDP(α) + log((α-1)/α) - (log δ + log α)/(α-1), minimised over the orders."""
    return min(
        rounds * rdp_of_order(a) + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for a in RDP_ORDERS
    )


@pytest.mark.parametrize(("sigma", "clients", "population", "rounds"),
                         [(0.75, 2, 8, 4), (2.7, 2, 8, 4), (1.1, 3, 20, 10)])  # fmt: skip
def test_poisson_epsilon_matches_the_rdp_formula(sigma, clients, population, rounds):
    q = clients / population
    expected = _epsilon_from_rdp(lambda a: _rdp_poisson_gaussian(q, sigma, a), rounds, DELTA)
    got = epsilon_spent(sigma, clients, population, rounds, DELTA, "poisson")
    assert got == pytest.approx(expected, rel=1e-6)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """The tight ε of a μ-GDP mechanism (Balle and Wang, 2018, Theorem 8), by bisection on
    δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_of(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    low, high = 0.0, 100.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_of(mid) > delta else (low, mid)
    return high


@pytest.mark.parametrize(("sigma", "rounds"), [(1.28, 4), (8.1, 4), (3.0, 20)])
def test_unamplified_epsilon_matches_rdp_and_bounds_the_exact_gaussian(sigma, rounds):
    """No amplification: T rounds of σ are one Gaussian of μ = √T/σ. RDP (α/(2σ²) per round)
    must match exactly, and sit above the tight ε, not far (RDP is an upper bound)."""
    got = epsilon_spent(sigma, 2, 8, rounds, DELTA, "none")
    assert got == pytest.approx(_epsilon_from_rdp(lambda a: a / (2 * sigma**2), rounds, DELTA),
                                rel=1e-9)  # fmt: skip
    exact = _exact_gaussian_epsilon(math.sqrt(rounds) / sigma, DELTA)
    assert exact < got < 1.3 * exact


def test_without_replacement_is_replace_one_with_double_sensitivity():
    """Sampling every client, WOR accounting is the plain Gaussian at σ/2 (replacing a client
    moves the clipped sum by 2C); sampling fewer spends less; more rounds spend more."""
    sigma, rounds = 3.0, 4
    all_sampled = epsilon_spent(sigma, 8, 8, rounds, DELTA, "without_replacement")
    half = sigma / 2
    assert all_sampled == pytest.approx(
        _epsilon_from_rdp(lambda a: a / (2 * half**2), rounds, DELTA), rel=1e-9
    )
    some = epsilon_spent(sigma, 2, 8, rounds, DELTA, "without_replacement")
    assert 0 < some < all_sampled
    assert epsilon_spent(sigma, 2, 8, 2 * rounds, DELTA, "without_replacement") > some
    assert epsilon_spent(sigma, 2, 8, 0, DELTA, "without_replacement") == 0.0


def test_noise_multiplier_for_hits_the_target_from_above():
    sigma = noise_multiplier_for(8.0, 2, 8, 4, DELTA, "poisson")
    assert epsilon_spent(sigma, 2, 8, 4, DELTA, "poisson") <= 8.0
    assert epsilon_spent(sigma * 0.99, 2, 8, 4, DELTA, "poisson") > 8.0


# ---------------------------------------------------------------- clipping and noise
def test_clip_update_scales_long_updates_only():
    update = [np.array([3.0, 0.0]), np.array([[4.0]])]  # norm 5 over both arrays
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(5.0)
    assert np.allclose(clipped[0], [0.6, 0.0]) and np.allclose(clipped[1], [[0.8]])
    kept, _ = clip_update(update, 10.0)
    assert np.allclose(kept[0], update[0]) and np.allclose(kept[1], update[1])


def test_private_mean_sums_clipped_updates_over_the_sample_size():
    """σ = 0: the global state plus the clipped updates summed over n (not over the replies:
    a dropped client lowers the sum, it never raises the others' weight)."""
    reference = [np.zeros(2, np.float32)]
    clients = [[np.array([3.0, 4.0], np.float32)], [np.array([0.1, 0.0], np.float32)]]
    result = private_mean(reference, clients, clip_norm=1.0, noise_multiplier=0.0,
                          expected_clients=4, rng=np.random.default_rng(0))  # fmt: skip
    assert result[0].dtype == np.float32
    assert np.allclose(result[0], (np.array([0.6, 0.8]) + np.array([0.1, 0.0])) / 4)


def test_private_mean_noise_has_std_sigma_c_over_n():
    rng = np.random.default_rng(1)
    reference = [rng.normal(size=(100, 150)), rng.normal(size=5000)]
    clients = [[r + 1e-4 * rng.normal(size=r.shape) for r in reference] for _ in range(3)]
    kwargs = dict(clip_norm=2.0, expected_clients=3, rng=np.random.default_rng(7))
    noisy = private_mean(reference, clients, noise_multiplier=0.6, **kwargs)
    plain = private_mean(reference, clients, noise_multiplier=0.0, **kwargs)
    deviation = np.concatenate([(a - b).ravel() for a, b in zip(noisy, plain, strict=True)])
    assert deviation.std() == pytest.approx(0.6 * 2.0 / 3, rel=0.03)  # 20,000 draws: ~0.5 %
    assert abs(deviation.mean()) < 0.03 * 0.4


def test_private_mean_refuses_integer_arrays():
    with pytest.raises(Exception, match="floating-point arrays only"):
        private_mean([np.arange(3)], [[np.arange(3)]], clip_norm=1.0, noise_multiplier=1.0,
                     expected_clients=1, rng=np.random.default_rng(0))  # fmt: skip


def test_noise_and_sampling_come_from_the_key_and_round():
    a = CentralPrivacy(1.0, 1.0, DELTA, "poisson", 2, 8, key=123)
    b = CentralPrivacy(1.0, 1.0, DELTA, "poisson", 2, 8, key=124)
    draw = lambda p, r: p.noise_rng(r).normal(size=4)  # noqa: E731
    assert np.array_equal(draw(a, 3), draw(a, 3))
    assert not np.array_equal(draw(a, 3), draw(a, 4))
    assert not np.array_equal(draw(a, 3), draw(b, 3))
    assert a.sampling_seed(3) != b.sampling_seed(3) != a.sampling_seed(4)


def test_key_is_drawn_once_kept_private_and_read_back(tmp_path):
    key = load_or_create_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path) == key
    assert load_or_create_key(tmp_path / "other") != key  # 128 random bits
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=KEY_FILE):
        load_or_create_key(tmp_path)
    path.write_text(json.dumps({"key": "ff"}))
    assert load_or_create_key(tmp_path) == 255


# ---------------------------------------------------------------- settings
def _config(**values) -> RunConfig:
    return RunConfig(output_dir="unused", **values)


def test_dp_defaults_fill_in_only_with_a_noise_multiplier():
    assert _config().dp_delta is None and CentralPrivacy.from_config(_config()) is None
    config = _config(dp_noise_multiplier=1.0, dp_clip_norm=0.5)
    assert (config.dp_delta, config.dp_accounting) == (1e-5, "without_replacement")
    privacy = CentralPrivacy.from_config(config)
    assert privacy is not None and privacy.noise_std == pytest.approx(1.0 * 0.5 / 2)


@pytest.mark.parametrize(("values", "message"), [
    (dict(dp_noise_multiplier=0.0, dp_clip_norm=1.0), "--dp_noise_multiplier must be > 0"),
    (dict(dp_noise_multiplier=-1.0, dp_clip_norm=1.0), "--dp_noise_multiplier must be > 0"),
    (dict(dp_noise_multiplier=float("nan"), dp_clip_norm=1.0), "must be a finite number"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=0.0), "--dp_clip_norm must be > 0"),
    (dict(dp_noise_multiplier=1.0), "needs --dp_clip_norm"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, dp_delta=0.0), "--dp_delta must be > 0"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, dp_delta=1.0), "--dp_delta must be < 1"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, dp_accounting="rdp"),
     "--dp_accounting must be one of without_replacement, poisson, none"),
    (dict(dp_clip_norm=1.0), "--dp_clip_norm applies to --dp_noise_multiplier only"),
    (dict(dp_delta=1e-6), "--dp_delta applies to --dp_noise_multiplier only"),
    (dict(dp_accounting="none"), "--dp_accounting applies to --dp_noise_multiplier only"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, clip_update_norm=1.0),
     "--clip_update_norm does not compose"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, aggregation="median", sample_clients=3),
     "--aggregation median does not compose"),
    (dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0, secure_aggregation=True),
     "--secure_aggregation hides"),
])  # fmt: skip
def test_bad_dp_values_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _config(**values)
    assert "\n" not in str(caught.value)


def test_dp_refuses_eeqa_and_runs_smartfed_with_uniform_k_or_dense():
    from smartfed.methods.smartfed import SmartFedSettings

    dp = dict(dp_noise_multiplier=1.0, dp_clip_norm=1.0)
    with pytest.raises(ConfigError, match=r"--no-enable_eeqa \(uniform K\) or --dense") as caught:
        _config(settings=SmartFedSettings(topk_experts=4), **dp)
    assert "\n" not in str(caught.value)
    uniform = _config(settings=SmartFedSettings(topk_experts=4, enable_eeqa=False), **dp)
    assert not uniform.settings.eeqa_active
    assert _config(settings=SmartFedSettings(), **dp).settings.dense  # SmartFed's default
    assert "EEQA" in COVERAGE and "refused under DP" in COVERAGE

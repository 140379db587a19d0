"""Every bad value of --aggregation, --trim_fraction, --krum_byzantine and --clip_update_norm is
refused in one line naming the flag, before any model loads (no run directory appears)."""

from __future__ import annotations

import pytest

from smartfed.cli.main import main
from smartfed.engine.config import RunConfig
from smartfed.errors import ConfigError


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--aggregation median --sample_clients 2",
         "--aggregation median needs at least 3 sampled clients (a median of 2 is their mean), "
         "got --sample_clients 2"),
        ("--aggregation trimmed_mean --sample_clients 4",
         "--aggregation trimmed_mean needs at least 5 sampled clients (--trim_fraction 0.2 cuts "
         "int(0.2 x n) clients from each end, none with fewer), got --sample_clients 4"),
        ("--aggregation trimmed_mean --trim_fraction 0.25 --sample_clients 3",
         "--aggregation trimmed_mean needs at least 4 sampled clients"),
        ("--aggregation trimmed_mean --trim_fraction 0.5",
         "--trim_fraction must be < 0.5, got 0.5"),
        ("--aggregation trimmed_mean --trim_fraction 0",
         "--trim_fraction must be > 0, got 0.0"),
        ("--aggregation median --sample_clients 5 --trim_fraction 0.2",
         "--trim_fraction applies to --aggregation trimmed_mean only"),
        ("--aggregation krum --sample_clients 4",
         "--aggregation krum needs at least 5 sampled clients (Krum with --krum_byzantine 1 "
         "needs n >= 2f + 3), got --sample_clients 4"),
        ("--aggregation krum --sample_clients 6 --krum_byzantine 2",
         "--aggregation krum needs at least 7 sampled clients"),
        ("--aggregation krum --sample_clients 5 --krum_byzantine 0",
         "--krum_byzantine must be >= 1, got 0"),
        ("--krum_byzantine 1", "--krum_byzantine applies to --aggregation krum only"),
        ("--clip_update_norm 0", "--clip_update_norm must be > 0, got 0.0"),
        ("--clip_update_norm -1", "--clip_update_norm must be > 0, got -1.0"),
    ],
)  # fmt: skip
def test_bad_robust_aggregation_values_are_one_line(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--num_clients", "10", *flags.split(), "--output_dir", str(out)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("smartfed: error: ") and message in lines[0]
    assert not out.exists()


def test_unknown_aggregation_names_the_choices():
    with pytest.raises(ConfigError, match=r"^--aggregation must be one of fedavg, median, "
                       r"trimmed_mean, krum, got 'mean'$"):  # fmt: skip
        RunConfig(aggregation="mean")


def test_defaults_are_filled_only_for_the_chosen_aggregator():
    config = RunConfig(aggregation="trimmed_mean", num_clients=10, sample_clients=5)
    assert (config.trim_fraction, config.krum_byzantine) == (0.2, None)
    config = RunConfig(aggregation="krum", num_clients=10, sample_clients=5)
    assert (config.trim_fraction, config.krum_byzantine) == (None, 1)
    assert config.aggregation_rule.describe() == "krum, krum_byzantine 1"
    plain = RunConfig()
    assert (plain.aggregation, plain.clip_update_norm) == ("fedavg", None)

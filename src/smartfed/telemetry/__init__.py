"""Run telemetry: energy accounting (CodeCarbon, offline) for federated training runs."""

from smartfed.telemetry.energy import DEFAULT_COUNTRY_ISO_CODE, EnergyMeter

__all__ = ["DEFAULT_COUNTRY_ISO_CODE", "EnergyMeter"]

"""Run telemetry: energy accounting (CodeCarbon, offline), training progress (``progress``) and
dashboards for per-round metrics (``reporting``: ``--report_to``)."""

from smartfed.telemetry.energy import DEFAULT_COUNTRY_ISO_CODE, EnergyMeter

__all__ = ["DEFAULT_COUNTRY_ISO_CODE", "EnergyMeter"]

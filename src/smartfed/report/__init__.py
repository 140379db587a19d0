"""Plots and a markdown page for a run directory or a bench folder (``smartfed report``)."""

from smartfed.report.page import write_report

__all__ = ["write_report"]

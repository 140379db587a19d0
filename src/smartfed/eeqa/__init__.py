"""Elastic Expert Quota Allocation (EEQA): per-matrix top-K quotas from importance (numpy only)."""

from smartfed.eeqa.allocation import allocate_quotas, uniform_quotas

__all__ = ["allocate_quotas", "uniform_quotas"]

"""``benchmarks/step_cost.py``'s parts: :mod:`stepcost.harness` (what every suite shares) and
one module per suite in :mod:`stepcost.suites`."""

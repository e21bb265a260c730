"""Smoke test of experiments/benchmark_gfn.py: the HyperGrid suite on a tiny grid, in process."""

import math

import pytest

from experiments import benchmark_gfn as B

TINY = B.Setup(batch=16, hidden=16)


def _check_row(row):
  assert (row["ndim"], row["height"]) == (2, 4)
  assert row["ms_per_iter"] > 0 and math.isfinite(row["ms_per_iter"])
  assert [m["mode"] for m in row["jax_modes"]] == ["plain", "active_buckets=2", "compact=2"]
  assert row["best_mode"] in ("plain", "active_buckets=2", "compact=2")
  assert row["best_active_buckets"] in (0, 2) and row["best_compact"] in (0, 2)
  assert row["iterations"] == 2
  assert 0.0 <= row["jax_tv"] <= 1.0


def test_hypergrid_suite_jax_only():
  result = B.run_hypergrid([(2, 4)], TINY, peer=False, tv_grid=(2, 4), tv_iterations=2,
                           active_buckets=2, warmup=1, block=2, repeats=1, log=lambda m: None,
                           compact=2)
  (row,) = result["hypergrid"]
  _check_row(row)
  assert row["ratio"] is None and row["torchgfn_tv"] is None and result["peer"] is None


def test_hypergrid_suite_with_torchgfn():
  if B.torch_available() is not None:
    pytest.skip(f"torchgfn not installed: {B.torch_available()}")
  result = B.run_hypergrid([(2, 4)], TINY, peer=True, tv_grid=(2, 4), tv_iterations=2,
                           active_buckets=2, warmup=1, block=2, repeats=1, log=lambda m: None,
                           compact=2)
  (row,) = result["hypergrid"]
  _check_row(row)
  assert row["torchgfn_ms_per_iter"] > 0 and row["ratio"] > 0
  assert 0.0 <= row["torchgfn_tv"] <= 1.0

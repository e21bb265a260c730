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


# ----------------------------------------------------------------- feeds and latency suites
def _tiny_feeds(**gfn):
  env, env_params, config = B.feeds_data("default", "default")
  config.gfn.horizon = 2
  config.gfn.num_candidates = 2
  config.gfn.num_scenarios = 2
  config.gfn.hidden = (16,)
  config.train.num_sessions = 2
  config.train.rollout_steps = 2
  config.train.updates_per_chunk = 1
  for key, value in gfn.items():
    config.gfn[key] = value
  return B.feeds_settings(config, env), env_params


def test_feeds_suite_with_torch_reference():
  from gfnfeeds.reference import torch_gfn
  if torch_gfn.torch_missing():
    pytest.skip(torch_gfn.torch_missing())
  settings, env_params = _tiny_feeds()
  feeds = B.run_feeds(settings, env_params, placements=("single",), repeats=1, torch_updates=1,
                      torch_warmup=0, torch_threads=(1,), log=lambda m: None, phase_repeats=1)
  for key in ("jax_decisions_per_s", "torch_decisions_per_s", "ratio",
              "jax_candidate_trajectories_per_s", "torch_candidate_trajectories_per_s"):
    assert feeds[key] > 0 and math.isfinite(feeds[key]), key
  assert feeds["ratio"] == pytest.approx(feeds["jax_decisions_per_s"]
                                         / feeds["torch_decisions_per_s"])
  assert feeds["candidate_trajectories_per_decision"] == 2 * 2
  assert feeds["settings"]["decisions_per_update"] == 4
  assert feeds["jax"][0]["decisions_per_call"] == 4 and feeds["torch"][0]["threads"] == 1
  rows = _check_phases(feeds)
  torch_ms = {r["phase"]: r["torch_ms_per_update"] for r in rows}
  assert all(v > 0 for v in torch_ms.values()), torch_ms
  # The torch phases are timed inside the update: they cover it and nothing else.
  parts = torch_ms["rollout"] + torch_ms["learning"]
  assert torch_ms["rollout"] == pytest.approx(
      torch_ms["proposal"] + torch_ms["scoring"] + torch_ms["environment"])
  assert 0.5 * torch_ms["update"] < parts <= torch_ms["update"]
  for r in rows:
    if r["jax_ms_per_update"] > 0:
      assert r["ratio"] == pytest.approx(r["torch_ms_per_update"] / r["jax_ms_per_update"])
    else:  # the derived JAX environment phase can come out <= 0 at tiny shapes: no ratio then
      assert r["phase"] == "environment" and r["ratio"] is None, r


def _check_phases(feeds):
  rows = feeds["phases"]
  assert [r["phase"] for r in rows] == list(B.PHASE_ROWS)
  jax_ms = {r["phase"]: r["jax_ms_per_update"] for r in rows}
  for name in ("proposal", "scoring", "rollout", "learning", "update"):
    assert jax_ms[name] > 0 and math.isfinite(jax_ms[name]), (name, jax_ms)
  assert jax_ms["environment"] == pytest.approx(
      jax_ms["rollout"] - jax_ms["proposal"] - jax_ms["scoring"])
  assert feeds["jax_phases"]["decisions"] == 4
  assert set(feeds["jax_phases"]["compile_s"]) == {"proposal", "scoring", "rollout", "learning"}
  return rows


def test_feeds_phases_without_the_peer():
  """The JAX half of the breakdown (what a machine without torch gets): each phase compiled and
  timed on its own; the table's torch column and ratios stay empty."""
  settings, env_params = _tiny_feeds()
  phases = B.time_feeds_phases_jax(settings, env_params, repeats=1)
  phases["ms_per_update"]["update"] = 1.0
  rows = _check_phases({"phases": B.phase_table(phases["ms_per_update"], None),
                        "jax_phases": phases})
  assert all(r["torch_ms_per_update"] is None and r["ratio"] is None for r in rows)


def test_latency_suite():
  settings, env_params = _tiny_feeds()
  rows = B.run_latency(settings, env_params, batches=(1, 2), calls=5, budget_s=1.0, warmup=1,
                       log=lambda m: None)
  assert [r["batch"] for r in rows] == [1, 2]
  for r in rows:
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["calls"] >= 5


def test_feeds_suite_skips_the_reference_where_it_lacks_the_settings():
  """distinct_beam has no torch twin: the reference is skipped with the reason, not run."""
  settings, _ = _tiny_feeds(candidates="distinct_beam")
  assert "not implemented by the reference" in B.torch_skip_reason(settings)
  assert "distinct_beam" in B.torch_skip_reason(settings)
  assert B.torch_skip_reason(settings, peer=False) == "disabled (peer=False)"
  from gfnfeeds.reference import torch_gfn
  plain, _ = _tiny_feeds()
  assert B.torch_skip_reason(plain) == torch_gfn.torch_missing()

"""The evaluation library and the `experiments.evaluate` program, end to end."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gfnfeeds import evaluation
from gfnfeeds.data.datasets import load_videos_arg
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.data.traces import load_network_traces
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.env.preferences import archetype_preferences, fixed_preferences
from gfnfeeds.policies.registry import make_policy
from tests.conftest import MMGC, require_shared

ROOT = Path(__file__).resolve().parents[1]


def run_program(*args, timeout=600):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("policy,network,trace,expected", [
    # The original simulator's scores: the two step logs' final lines, and the fresh
    # evaluation of no_save on mixed/8 quoted in SIMULATOR.md section 9.
    ("no_save", "high", "0", -4.501062),
    ("fixed_preload", "low", "0", -31.681894),
    ("no_save", "mixed", "8", -3.690148),
])
def test_reference_quirks_scores_match_original(mmgc_videos, policy, network, trace, expected):
  """Per-trace MMGC scores with --reference_quirks equal the original simulator's (1e-4)."""
  traces = load_network_traces(MMGC / "network" / network)
  env = FeedsEnv(reference_quirks=True)
  catalog = pack_catalog(mmgc_videos)
  params = env.make_params(catalog, pack_world(traces))
  table = evaluation.build_sessions(env, mmgc_videos, catalog, [t.name for t in traces],
                                    [len(t) for t in traces], "mmgc_default", "mmgc",
                                    fixed_preferences(), seed=0)
  metrics = evaluation.run_sessions(env, make_policy(policy, env), params, table, seed=0)
  assert set(metrics) == set(evaluation.metric_names(env, params))  # what --columns accepts
  i = table.trace_names.index(trace)
  assert abs(metrics["score"][i] - expected) < 1e-4
  assert metrics["completed"].all() and (metrics["invalid_actions"] == 0).all()


def test_sessions_are_identical_across_policies_and_seeded():
  """Same flags and seed -> the same sessions; another seed -> other users and weights."""
  videos, ladder = load_videos_arg("default")
  env = FeedsEnv()
  catalog = pack_catalog(videos, ladder)
  prefs = archetype_preferences()
  names, lens = ["a", "b", "c"], [2400, 2400, 2400]
  t1 = evaluation.build_sessions(env, videos, catalog, names, lens, "sampled:4", "sampled", prefs,
                                 seed=3, random_offset=True)
  t2 = evaluation.build_sessions(env, videos, catalog, names, lens, "sampled:4", "sampled", prefs,
                                 seed=3, random_offset=True)
  t3 = evaluation.build_sessions(env, videos, catalog, names, lens, "sampled:4", "sampled", prefs,
                                 seed=4, random_offset=True)
  assert len(t1) == 12
  for a, b in zip(jax_leaves(t1.sessions), jax_leaves(t2.sessions)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(np.asarray(t1.sessions.watch_ms), np.asarray(t3.sessions.watch_ms))
  assert not np.array_equal(np.asarray(t1.sessions.weights), np.asarray(t3.sessions.weights))
  # One session per (trace, user) pair, users shared across traces.
  watch = np.asarray(t1.sessions.watch_ms)
  vids = np.asarray(t1.sessions.video_ids)
  assert t1.trace_names == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
  assert np.all((watch >= 0) & (watch <= 1000 * np.asarray(catalog.num_chunks)[vids]))


def test_sampled_users_are_shared_across_traces_per_session_users_are_not():
  """With a catalog of exactly env.num_videos videos (every session the same videos, as
  with MMGC), `sampled:N` gives user u the same watch durations on every trace, and
  `sampled_per_session:N` a fresh user per session; both reproducible by seed."""
  videos, ladder = load_videos_arg("default")
  env = FeedsEnv()
  videos = videos[:env.num_videos]
  catalog = pack_catalog(videos, ladder)
  prefs = archetype_preferences()
  names, lens = ["a", "b", "c"], [2400, 2400, 2400]

  def watch(users, seed=3):
    table = evaluation.build_sessions(env, videos, catalog, names, lens, users, "sampled",
                                      prefs, seed=seed)
    return np.asarray(table.sessions.watch_ms), table

  shared, _ = watch("sampled:2")
  assert np.array_equal(shared[0], shared[2]) and np.array_equal(shared[1], shared[3])
  assert not np.array_equal(shared[0], shared[1])
  each, table = watch("sampled_per_session:2")
  assert table.trace_names == ["a", "a", "b", "b", "c", "c"]
  assert len({tuple(row) for row in each}) == 6  # six sessions, six users
  assert not any(np.array_equal(each[i], shared[i]) for i in range(6))  # its own key stream
  np.testing.assert_array_equal(each, watch("sampled_per_session:2")[0])
  assert not np.array_equal(each, watch("sampled_per_session:2", seed=4)[0])
  with pytest.raises(ValueError, match="sampled_per_session:N"):
    evaluation.parse_users("sampled_per_session:0")


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_mean_ci():
  """The CI half-width is 1.96 * sd / sqrt(n)."""
  x = np.array([1.0, 2.0, 3.0, 4.0])
  m, h = evaluation.mean_ci(x)
  assert m == 2.5 and abs(h - 1.96 * np.std(x, ddof=1) / 2.0) < 1e-12


def test_clustered_mean_ci():
  """One value per cluster: mean_ci. Each value repeated in its cluster (no new information):
  the CI of the values once, where mean_ci would shrink by sqrt(4). One cluster: no CI."""
  x = np.random.default_rng(0).normal(size=30)
  np.testing.assert_allclose(evaluation.clustered_mean_ci(x, [f"t{i}" for i in range(30)]),
                             evaluation.mean_ci(x), rtol=1e-12)
  repeated = evaluation.clustered_mean_ci(np.repeat(x, 4), np.repeat(np.arange(30), 4))
  np.testing.assert_allclose(repeated, evaluation.mean_ci(x), rtol=1e-12)
  assert repeated[1] > 1.9 * evaluation.mean_ci(np.repeat(x, 4))[1]
  assert np.isnan(evaluation.clustered_mean_ci(x, ["a"] * 30)[1])


def test_program_end_to_end_pairs_sessions(tmp_path):
  """Two policies, same flags: same sessions row by row; the CSV has the documented columns;
  experiments.compare on those flags reproduces both."""
  common = ["--network=default:low", "--videos=default", "--users=sampled:2",
            "--preferences=sampled", "--sessions=8", "--random_offset", "--progress=false"]
  out_a, out_b = tmp_path / "a.csv", tmp_path / "b.csv"
  ra = run_program("--policy=fixed_preload", f"--output_csv={out_a}", *common)
  assert ra.returncode == 0, ra.stderr[-2000:]
  rb = run_program("--policy=pdas_w", f"--output_csv={out_b}", *common)
  assert rb.returncode == 0, rb.stderr[-2000:]
  assert "score" in ra.stdout and "±" in ra.stdout
  rows_a, rows_b = read_csv(out_a), read_csv(out_b)
  assert len(rows_a) == len(rows_b) == 8
  required = {"trace", "user", "score", "bandwidth_bytes", "qoe", "wasted_bytes",
              "download_watch_ratio", "rebuffer_s", "normalized_qoe", "wastage_pct"}
  assert required <= set(rows_a[0])
  for a, b in zip(rows_a, rows_b):
    assert (a["trace"], a["user"], a["alpha"], a["beta"], a["gamma"], a["theta"]) == \
           (b["trace"], b["user"], b["alpha"], b["beta"], b["gamma"], b["theta"])
    assert 0.0 <= float(a["normalized_qoe"]) <= 1.0
    assert a["completed"] == "1"
  assert any(a["score"] != b["score"] for a, b in zip(rows_a, rows_b))
  # experiments.compare on the same flags: its per-session scores are evaluate's, and its
  # paired difference is the mean of the per-session differences.
  import json
  out = subprocess.run([sys.executable, "-m", "experiments.compare",
                        "--policies=fixed_preload,pdas_w", "--reference=fixed_preload",
                        f"--json={tmp_path / 'c.json'}", *common],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache")))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "Δscore vs fixed_preload" in out.stdout
  result = json.loads((tmp_path / "c.json").read_text())
  scores = {n: np.array(v) for n, v in result["session_scores"].items()}
  assert result["sessions"] == 8
  for name, rows in (("fixed_preload", rows_a), ("pdas_w", rows_b)):
    np.testing.assert_allclose(scores[name], [float(r["score"]) for r in rows], rtol=1e-6)
  np.testing.assert_allclose(result["score_difference_vs_reference"]["pdas_w"][0],
                             np.mean(scores["pdas_w"] - scores["fixed_preload"]), rtol=1e-6)
  assert result["score_difference_vs_reference"]["fixed_preload"] == [0.0, 0.0]
  assert "trace-clustered" in out.stdout and len(result["session_traces"]) == 8
  np.testing.assert_allclose(
      result["score_difference_vs_reference_trace_clustered"]["pdas_w"],
      evaluation.clustered_mean_ci(scores["pdas_w"] - scores["fixed_preload"],
                                   result["session_traces"]), rtol=1e-6)


def test_compare_rejects_unknown_columns_before_running():
  out = subprocess.run([sys.executable, "-m", "experiments.compare", "--policies=pdas",
                        "--columns=score,steps", "--network=default:low", "--sessions=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert "--columns" in out.stderr and "steps" in out.stderr and "rebuffer_s" in out.stderr
  assert "sessions=" not in out.stdout  # failed before any session ran
  assert "megabits" in out.stderr  # every per-session metric is offered, not only the summary's


def test_compare_warns_about_sessions_cut_at_max_steps():
  """A policy whose sessions hit --max_steps is named in a warning (its batch ran to the limit)."""
  out = subprocess.run([sys.executable, "-m", "experiments.compare", "--policies=no_save",
                        "--network=default:low", "--sessions=3", "--max_steps=5",
                        "--progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(ROOT / ".jax_cache")))
  assert out.returncode == 0, out.stderr[-2000:]
  assert "warning: no_save: 3 of 3 sessions hit --max_steps=5" in out.stdout


@pytest.mark.parametrize("args,needle", [
    (["--policy=nope"], "nope"),
    (["--users=sampled:x"], "--users"),
    (["--network=/no/such/dir"], "/no/such/dir"),
    (["--videos=/no/such/catalog"], "/no/such/catalog"),
    (["--preferences=weird"], "preferences"),
])
def test_program_bad_flags_fail_clearly(args, needle):
  """Bad flags or paths: non-zero exit and a message naming the culprit."""
  r = run_program(*args, "--network=default:low" if "--network" not in args[0] else args[0],
                  timeout=120)
  assert r.returncode != 0
  assert needle in (r.stderr + r.stdout)


def test_mmgc_catalog_dir_and_filters(tmp_path):
  """Real MMGC data by path with class/split filters runs and labels traces by file name."""
  require_shared()
  out = tmp_path / "m.csv"
  r = run_program("--policy=fixed_preload", f"--network={MMGC / 'network' / 'mixed'}",
                  f"--videos={MMGC}", "--trace_class=low", "--split=all", "--progress=false",
                  f"--output_csv={out}")
  assert r.returncode == 0, r.stderr[-2000:]
  rows = read_csv(out)
  assert rows and all(row["trace"].isdigit() for row in rows)
  assert len(rows) < 20  # mixed holds low, medium and high traces

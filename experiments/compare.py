r"""Runs several controllers on exactly the same sessions and tabulates them.

    python -m experiments.compare --policies=no_save,fixed_preload,mpc_fixed_preload,pdas,pdas_w \
        --network=../shared/traces/network/oboe,../shared/traces/network/fcc \
        --skip_invalid_traces --split=test --trace_class=low \
        --videos=../shared/traces/mmgc2022 --users=sampled:8 --preferences=sampled \
        --reference=pdas --json=/tmp/table.json

Prints a markdown table of means with 95% CIs per policy, and for each policy
the mean per-session difference in score_w against --reference with its 95% CI
(sessions pair one to one because every policy sees the same sessions), and the
same CI clustered by trace (sessions on one trace are not independent draws;
`evaluation.clustered_mean_ci`).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import time  # noqa: E402

from absl import app, flags  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from experiments import common  # noqa: E402
from gfnfeeds import evaluation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("policies", ["no_save", "fixed_preload", "mpc_fixed_preload", "pdas", "pdas_w"],
                  "controllers to compare; learned ones take settings as name:key=value..., "
                  "e.g. gfn:num_candidates=1 or gfn:condition=mmgc:checkpoint=DIR")
flags.DEFINE_string("reference", None, "policy the paired score differences are taken against")
flags.DEFINE_list("columns", ["score", "normalized_qoe", "qoe", "rebuffer_s", "bandwidth_mb",
                              "wastage_pct"], "metrics in the table")
flags.DEFINE_string("json", None, "write all summaries here")
common.define_session_flags()


def main(argv):
  if len(argv) > 1:
    common.fail("compare", f"unexpected arguments {argv[1:]}")
  from gfnfeeds.policies.registry import load_policy, parse_policy_spec
  if FLAGS.reference and FLAGS.reference not in FLAGS.policies:
    common.fail("compare", f"--reference={FLAGS.reference} is not in --policies")
  setup = common.build_setup("compare")
  known = evaluation.metric_names(setup.env, setup.params)
  unknown = [c for c in FLAGS.columns if c not in known]
  if unknown:  # before any session runs, not after the whole evaluation
    common.fail("compare",
                f"--columns: unknown metric(s) {unknown}; choose from {', '.join(known)}")
  try:
    policies = {}
    for spec in FLAGS.policies:
      name, checkpoint, overrides = parse_policy_spec(spec)
      policies[spec] = load_policy(name, setup.env, checkpoint, **overrides)
  except (ValueError, TypeError, OSError) as e:
    common.fail("compare", str(e))
  print(f"network={FLAGS.network} class={FLAGS.trace_class} split={FLAGS.split} "
        f"traces={setup.num_traces} users={FLAGS.users} preferences={FLAGS.preferences} "
        f"sessions={len(setup.table)}", flush=True)
  labels = {n: evaluation.policy_label(n, p) for n, (p, _) in policies.items()}
  results, seconds = {}, {}
  for name, (policy, policy_params) in policies.items():
    t0 = time.perf_counter()
    results[name] = common.run_policy(setup, policy, policy_params, labels[name])
    seconds[name] = time.perf_counter() - t0
    print(f"  {labels[name]}: {seconds[name]:.1f}s", flush=True)
  summaries = {n: evaluation.summarize(m, FLAGS.columns) for n, m in results.items()}
  diffs, clustered = {}, {}
  if FLAGS.reference:
    ref = results[FLAGS.reference]["score"]
    diffs = {n: evaluation.mean_ci(m["score"] - ref) for n, m in results.items()}
    clustered = {n: evaluation.clustered_mean_ci(m["score"] - ref, setup.table.trace_names)
                 for n, m in results.items()}
  header = ["policy"] + list(FLAGS.columns) + (
      [f"Δscore vs {FLAGS.reference}", "trace-clustered ±"] if diffs else [])
  print("\n| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for n in results:
    cells = [labels[n]] + [f"{summaries[n][c][0]:.3f} ± {summaries[n][c][1]:.3f}"
                           for c in FLAGS.columns]
    if diffs:
      cells += [f"{diffs[n][0]:+.3f} ± {diffs[n][1]:.3f}", f"{clustered[n][1]:.3f}"]
    print("| " + " | ".join(cells) + " |")
  common.write_json(FLAGS.json, {
      "flags": {k: getattr(FLAGS, k) for k in ("network", "videos", "users", "preferences",
                                               "trace_class", "split", "seed",
                                               "reference_quirks", "sessions")},
      "sessions": len(setup.table), "summaries": summaries,
      "score_difference_vs_reference": diffs,
      "score_difference_vs_reference_trace_clustered": clustered, "seconds": seconds,
      # Per-session score_w in session order (the same sessions for every policy), with each
      # session's trace, so any other paired difference and its CI can be computed from the file.
      "session_scores": {n: [float(x) for x in m["score"]] for n, m in results.items()},
      "session_traces": list(setup.table.trace_names)})


if __name__ == "__main__":
  app.run(main)

r"""Evaluates a controller on explicit sessions and prints means with 95% CIs.

    python -m experiments.evaluate --policy=pdas --network=default --videos=default
    python -m experiments.evaluate --policy=no_save --reference_quirks \
        --network=../shared/traces/mmgc2022/network/high \
        --videos=../shared/traces/mmgc2022 --users=mmgc_default --output_csv=/tmp/ns.csv

One session per (trace file, user) pair, all vmapped and sharded over local
devices. The same flags and --seed give every policy the same sessions.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import csv  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from experiments import common  # noqa: E402
from gfnfeeds import evaluation  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("policy", "pdas", "controller name (see gfnfeeds.policies.registry)")
flags.DEFINE_string("output_csv", None, "write one row per session here")
flags.DEFINE_string("checkpoint", None,
                    "learned policies: export dir or training workdir (default: the committed one)")
flags.DEFINE_integer("gfn_candidates", None, "gfn: K candidate plans (1 = single candidate)")
flags.DEFINE_enum("gfn_condition", None, ["user", "mmgc"],
                  "gfn: condition and select on the user's w or the fixed MMGC weights")
common.define_session_flags()

CSV_COLUMNS = ("trace", "user", "score", "bandwidth_bytes", "qoe", "wasted_bytes",
               "download_watch_ratio", "rebuffer_s", "normalized_qoe", "wastage_pct", "quality",
               "smoothness", "startup_delay_s", "invalid_actions", "decisions", "completed",
               "aborted", "alpha", "beta", "gamma", "theta")


def main(argv):
  if len(argv) > 1:
    common.fail("evaluate", f"unexpected arguments {argv[1:]}")
  setup = common.build_setup("evaluate")
  policy, policy_params = common.load_policy_from_flags("evaluate", FLAGS.policy, setup.env)
  table = setup.table
  label = evaluation.policy_label(FLAGS.policy, policy)
  print(f"policy={label} traces={setup.num_traces} videos={setup.num_videos} "
        f"users={FLAGS.users} preferences={FLAGS.preferences} sessions={len(table)}", flush=True)
  t0 = time.perf_counter()
  metrics = common.run_policy(setup, policy, policy_params, label)
  elapsed = time.perf_counter() - t0
  summary = evaluation.summarize(metrics)
  print(evaluation.format_summary(f"{label} on {FLAGS.network}", summary, len(table)))
  print(f"  wall time {elapsed:.1f}s (compilation included)")
  if FLAGS.output_csv:
    w = np.asarray(table.sessions.weights)
    with open(FLAGS.output_csv, "w", newline="") as f:
      out = csv.writer(f)
      out.writerow(CSV_COLUMNS)
      for i in range(len(table)):
        row = [table.trace_names[i], table.user_names[i]]
        row += [_fmt(metrics[c][i]) for c in CSV_COLUMNS[2:17]]
        row += [_fmt(x) for x in w[i]]
        out.writerow(row)
    print(f"  wrote {FLAGS.output_csv}")


def _fmt(x) -> str:
  x = np.asarray(x)
  if x.dtype == bool:
    return str(int(x))
  if np.issubdtype(x.dtype, np.integer):
    return str(int(x))
  return repr(float(x))


if __name__ == "__main__":
  app.run(main)

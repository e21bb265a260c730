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
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from gfnfeeds import evaluation  # noqa: E402
from gfnfeeds.data import traces as trace_io  # noqa: E402
from gfnfeeds.data.datasets import load_network_arg, load_videos_arg  # noqa: E402
from gfnfeeds.data.packing import pack_catalog, pack_world  # noqa: E402
from gfnfeeds.data.types import DataError  # noqa: E402
from gfnfeeds.env.feeds import FeedsEnv  # noqa: E402
from gfnfeeds.env.preferences import archetype_preferences, fixed_preferences  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("policy", "pdas", "controller name (see gfnfeeds.policies.registry)")
flags.DEFINE_string("network", "default",
                    "comma-separated trace directories/files, or default[:low|medium|high]")
flags.DEFINE_string("videos", "default", "MMGC catalog dir (video_size/, user_ret/), .npz, or default")
flags.DEFINE_string("users", "mmgc_default", "mmgc_default | mmgc_samples:N | sampled:N")
flags.DEFINE_enum("preferences", "mmgc", ["mmgc", "sampled"], "user weights (alpha, beta, gamma, theta)")
flags.DEFINE_enum("trace_class", "all", ["all", "low", "medium", "high"], "filter traces by class")
flags.DEFINE_enum("split", "all", ["all", "train", "test"], "filter traces by the 80/20 split")
flags.DEFINE_bool("skip_invalid_traces", False,
                  "leave out trace files that fail validation instead of stopping")
flags.DEFINE_bool("reference_quirks", False, "reproduce MMGC quirks 2 and 4 (SIMULATOR.md 9)")
flags.DEFINE_bool("random_offset", False, "start each session at a seeded random trace row")
flags.DEFINE_integer("sessions", None, "number of sessions (cycles the trace x user pairs)")
flags.DEFINE_integer("seed", 0, "seed of sessions and stochastic policies")
flags.DEFINE_integer("batch_size", 4096, "sessions per device dispatch")
flags.DEFINE_integer("max_steps", 4096, "decision limit per session")
flags.DEFINE_string("output_csv", None, "write one row per session here")
flags.DEFINE_bool("progress", True, "show a progress bar")

CSV_COLUMNS = ("trace", "user", "score", "bandwidth_bytes", "qoe", "wasted_bytes",
               "download_watch_ratio", "rebuffer_s", "normalized_qoe", "wastage_pct", "quality",
               "smoothness", "startup_delay_s", "invalid_actions", "decisions", "completed",
               "aborted", "alpha", "beta", "gamma", "theta")


def fail(message: str) -> None:
  print(f"evaluate: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  from gfnfeeds.policies.registry import make_policy  # deferred: registry imports every policy
  try:
    evaluation.parse_users(FLAGS.users)
    traces, _ = load_network_arg(FLAGS.network,
                                 "skip" if FLAGS.skip_invalid_traces else "raise")
    traces = trace_io.filter_traces(traces, trace_class=FLAGS.trace_class, split=FLAGS.split)
    if not traces:
      fail(f"no traces left in {FLAGS.network!r} after --trace_class={FLAGS.trace_class} "
           f"--split={FLAGS.split}")
    videos, ladder = load_videos_arg(FLAGS.videos)
  except (DataError, ValueError, OSError) as e:
    fail(str(e))
  env = FeedsEnv(reference_quirks=FLAGS.reference_quirks, max_steps=FLAGS.max_steps)
  try:
    policy = make_policy(FLAGS.policy, env)
  except ValueError as e:
    fail(str(e))
  catalog = pack_catalog(videos, ladder)
  prefs = archetype_preferences() if FLAGS.preferences == "sampled" else fixed_preferences()
  params = env.make_params(catalog, pack_world(traces), prefs)
  table = evaluation.build_sessions(
      env, videos, catalog, [t.name for t in traces], [len(t) for t in traces], FLAGS.users,
      FLAGS.preferences, prefs, FLAGS.seed, FLAGS.sessions, FLAGS.random_offset)
  print(f"policy={FLAGS.policy} traces={len(traces)} videos={len(videos)} users={FLAGS.users} "
        f"preferences={FLAGS.preferences} sessions={len(table)}", flush=True)
  bar = None
  if FLAGS.progress and len(table) > FLAGS.batch_size:
    from tqdm import tqdm
    bar = tqdm(total=len(table), unit="session", file=sys.stderr)
  t0 = time.perf_counter()
  metrics = evaluation.run_sessions(env, policy, params, table, FLAGS.seed, FLAGS.batch_size,
                                    FLAGS.max_steps, progress=bar.update if bar else None)
  if bar:
    bar.close()
  elapsed = time.perf_counter() - t0
  summary = evaluation.summarize(metrics)
  print(evaluation.format_summary(f"{FLAGS.policy} on {FLAGS.network}", summary, len(table)))
  incomplete = int(np.sum(~metrics["completed"]))
  if incomplete:
    print(f"  warning: {incomplete} sessions hit --max_steps={FLAGS.max_steps} before ending")
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

"""Flags and setup shared by the evaluation programs (evaluate, compare)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys

import jax
import numpy as np

from absl import flags

from gfnfeeds import evaluation
from gfnfeeds.data import traces as trace_io
from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.data.types import DataError
from gfnfeeds.env.feeds import EnvParams, FeedsEnv
from gfnfeeds.env.preferences import archetype_preferences, fixed_preferences

FLAGS = flags.FLAGS


def define_session_flags() -> None:
  """The flags that define the evaluated sessions (identical across programs)."""
  flags.DEFINE_string("network", "default",
                      "comma-separated trace directories/files, or default[:low|medium|high]")
  flags.DEFINE_string("videos", "default",
                      "MMGC catalog dir (video_size/, user_ret/), .npz, or default")
  flags.DEFINE_string("users", "mmgc_default",
                      "mmgc_default | mmgc_samples:N | sampled:N (N users, each the same on "
                      "every trace) | sampled_per_session:N (N sessions per trace, a fresh "
                      "user each)")
  flags.DEFINE_enum("preferences", "mmgc", ["mmgc", "sampled"],
                    "user weights (alpha, beta, gamma, theta)")
  flags.DEFINE_enum("trace_class", "all", ["all", "low", "medium", "high"],
                    "filter traces by class")
  flags.DEFINE_enum("split", "all", ["all", "train", "test"], "filter traces by the 80/20 split")
  flags.DEFINE_bool("skip_invalid_traces", False,
                    "leave out trace files that fail validation instead of stopping")
  flags.DEFINE_bool("reference_quirks", False, "reproduce MMGC quirks 2 and 4 (SIMULATOR.md 9)")
  flags.DEFINE_bool("random_offset", False, "start each session at a seeded random trace row")
  flags.DEFINE_integer("sessions", None, "number of sessions (cycles the trace x user pairs)")
  flags.DEFINE_integer("seed", 0, "seed of sessions and stochastic policies")
  flags.DEFINE_integer("batch_size", 4096, "sessions per device dispatch")
  flags.DEFINE_integer("max_steps", 4096, "decision limit per session")
  flags.DEFINE_bool("progress", True, "show a progress bar")


def device_description() -> str:
  """The machine the benchmarks ran on, for their JSON and tables."""
  d = jax.devices()[0]
  if d.platform == "cpu":
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{jax.device_count()} XLA host devices")
  return f"{d.platform}: {d.device_kind} x{jax.device_count()}"


def write_json(path: str | None, result: dict) -> None:
  """Writes a program's machine-readable result (if a path was given)."""
  if path:
    with open(path, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {path}")


def fail(program: str, message: str) -> None:
  print(f"{program}: error: {message}", file=sys.stderr)
  sys.exit(2)


@dataclasses.dataclass
class Setup:
  env: FeedsEnv
  params: EnvParams
  table: evaluation.SessionTable
  num_traces: int
  num_videos: int


def build_setup(program: str) -> Setup:
  """Loads data and builds the sessions from the flags; exits with a clear message on bad input."""
  try:
    evaluation.parse_users(FLAGS.users)
    traces, _ = load_network_arg(FLAGS.network,
                                 "skip" if FLAGS.skip_invalid_traces else "raise")
    traces = trace_io.filter_traces(traces, trace_class=FLAGS.trace_class, split=FLAGS.split)
    if not traces:
      fail(program, f"no traces left in {FLAGS.network!r} after --trace_class="
           f"{FLAGS.trace_class} --split={FLAGS.split}")
    videos, ladder = load_videos_arg(FLAGS.videos)
  except (DataError, ValueError, OSError) as e:
    fail(program, str(e))
  env = FeedsEnv(reference_quirks=FLAGS.reference_quirks, max_steps=FLAGS.max_steps)
  catalog = pack_catalog(videos, ladder)
  prefs = archetype_preferences() if FLAGS.preferences == "sampled" else fixed_preferences()
  params = env.make_params(catalog, pack_world(traces), prefs)
  table = evaluation.build_sessions(
      env, videos, catalog, [t.name for t in traces], [len(t) for t in traces], FLAGS.users,
      FLAGS.preferences, prefs, FLAGS.seed, FLAGS.sessions, FLAGS.random_offset)
  return Setup(env=env, params=params, table=table, num_traces=len(traces),
               num_videos=len(videos))


def load_policy_from_flags(program: str, name: str, env: FeedsEnv):
  """(policy, policy_params) for `name` with the --checkpoint/--gfn_* flags; exits on bad input."""
  from gfnfeeds.policies.registry import load_policy  # deferred: imports every policy
  overrides = {}
  if name == "gfn":
    if FLAGS.gfn_candidates is not None:
      if FLAGS.gfn_candidates < 1:
        fail(program, f"--gfn_candidates must be >= 1, got {FLAGS.gfn_candidates}")
      overrides["num_candidates"] = FLAGS.gfn_candidates
    if FLAGS.gfn_condition is not None:
      overrides["condition"] = FLAGS.gfn_condition
  elif FLAGS.gfn_candidates is not None or FLAGS.gfn_condition is not None:
    fail(program, f"--gfn_candidates/--gfn_condition apply to --policy=gfn, not {name!r}")
  try:
    from gfnfeeds.policies.registry import LEARNED_LOADERS
    if FLAGS.checkpoint is not None and name not in LEARNED_LOADERS:
      fail(program, f"--checkpoint applies to learned policies, not {name!r}")
    return load_policy(name, env, FLAGS.checkpoint, **overrides)
  except (ValueError, OSError) as e:
    fail(program, str(e))


def run_policy(setup: Setup, policy, policy_params=(), label: str = "") -> dict:
  """Runs one policy over the setup's sessions, with a progress bar on long runs.

  Warns (naming `label`) when sessions hit --max_steps: a controller that never
  finishes some sessions (e.g. it keeps sleeping) makes its whole batch run to the
  limit, many times longer than usual, and its scores cover truncated sessions.
  """
  bar = None
  if FLAGS.progress and len(setup.table) > FLAGS.batch_size:
    from tqdm import tqdm
    bar = tqdm(total=len(setup.table), unit="session", file=sys.stderr)
  metrics = evaluation.run_sessions(setup.env, policy, setup.params, setup.table, FLAGS.seed,
                                    FLAGS.batch_size, FLAGS.max_steps,
                                    progress=bar.update if bar else None,
                                    policy_params=policy_params)
  if bar:
    bar.close()
  incomplete = int(np.sum(~np.asarray(metrics["completed"])))
  if incomplete:
    print(f"  warning: {label + ': ' if label else ''}{incomplete} of {len(setup.table)} sessions "
          f"hit --max_steps={FLAGS.max_steps} before ending", flush=True)
  return metrics

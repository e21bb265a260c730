r"""Environment throughput: scanned JAX rollouts vs the plain-Python reference.

    python -m experiments.benchmark_env --json=/tmp/bench_env.json

Measures environment steps/s of `make_autoreset_rollout` (auto-reset, a trivial
random-valid policy, sampled users and preferences, random trace offsets) for
several session counts, with the session axis sharded over every local device
(on CPU, one XLA host device per core). Compile time is reported separately;
steps/s is the median of --repeats timed runs. The plain-Python reference
simulator runs the same kind of sessions in the same process, in slices between
the JAX runs (a shared machine's speed drifts), for the ratio.
"""

from __future__ import annotations

import os

# One XLA device per core on CPU, so the session axis can be sharded; set before jax loads.
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import random  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from experiments.common import device_description, write_json  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from gfnfeeds.data.datasets import load_network_arg, load_videos_arg  # noqa: E402
from gfnfeeds.data.packing import pack_catalog, pack_world  # noqa: E402
from gfnfeeds.env.feeds import FeedsEnv  # noqa: E402
from gfnfeeds.env.preferences import archetype_preferences  # noqa: E402
from gfnfeeds.env.rollout import make_autoreset_rollout, session_mesh, shard_sessions  # noqa: E402
from gfnfeeds.policies.base import RandomValidPolicy  # noqa: E402
from gfnfeeds.reference.simulator import ReferenceSession, ReferenceSimulator  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("network", "default", "traces: 'default[:class]' or directories")
flags.DEFINE_string("videos", "default", "catalog: 'default', an MMGC catalog dir or .npz")
flags.DEFINE_list("sessions", ["1", "64", "1024", "16384", "65536"], "session counts")
flags.DEFINE_integer("steps", 200, "decision steps per session per timed run")
flags.DEFINE_integer("repeats", 5, "timed runs per session count (median reported)")
flags.DEFINE_float("reference_seconds", 10.0,
                   "total time of the Python reference, split into slices between JAX runs")
flags.DEFINE_string("json", None, "write the results as JSON here")
flags.DEFINE_integer("seed", 0, "PRNG seed")


class ReferenceTimer:
  """Times the plain-Python reference in slices, so that its slices can be interleaved
  with the JAX runs and both see the same machine (shared machines drift by 2x).

  The same work as the JAX rollout is timed (`steps_per_s`): a session's
  construction (`ReferenceSimulator(...)`, its reset), as the JAX auto-reset is;
  the observation the policy reads (`sim.slots()`), as the JAX step returns one;
  the trivial random policy's choice, as the JAX rollout's policy; and the step.
  `env_steps_per_s` leaves the policy's choice out; `steps_per_s_without_resets`
  times `sim.step` alone. The harness's preparation of plain lists from the numpy
  data is not timed.
  """

  def __init__(self, traces, videos, ladder, seed: int):
    self.rnd = random.Random(seed)
    self.traces = [(t.times_s.tolist(), t.bandwidth_mbps.tolist()) for t in traces]
    self.videos = [v.chunk_sizes.tolist() for v in videos]
    self.chunks = [v.num_chunks for v in videos]
    self.ladder = tuple(ladder)
    self.steps = 0
    self.t_env = 0.0
    self.t_steps = 0.0
    self.t_policy = 0.0
    self.slices = []  # steps/s of each slice (construction and policy included)
    self.env_slices = []  # steps/s of each slice, environment only (construction included)

  def _session(self):
    rnd = self.rnd
    times, mbps = self.traces[rnd.randrange(len(self.traces))]
    vids = [rnd.randrange(len(self.videos)) for _ in range(7)]
    watch = [rnd.randrange(0, self.chunks[i] * 1000 + 1) for i in vids]
    session = ReferenceSession(trace_times=times, trace_mbps=mbps,
                               chunk_sizes=[self.videos[i] for i in vids], watch_ms=watch,
                               bitrates_kbps=self.ladder, start_row=rnd.randrange(1, len(times)))
    t0 = time.perf_counter()
    sim = ReferenceSimulator(session)
    return sim, time.perf_counter() - t0

  def run(self, seconds: float) -> None:
    """Runs sessions for about `seconds` of wall time; accumulates environment time."""
    rnd, steps, t_env, t_steps, t_policy = self.rnd, 0, 0.0, 0.0, 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
      sim, t_reset = self._session()
      t_env += t_reset
      while not sim.done and sim.metrics()["steps"] < 4096:
        t0 = time.perf_counter()
        slots = sim.slots()  # the observation (the JAX step returns one too)
        t1 = time.perf_counter()
        choices = [s.video_id for s in slots if s.chunk_counter < s.num_chunks]
        if choices and rnd.random() < 0.9:
          action = (rnd.choice(choices), rnd.randrange(len(self.ladder)), 0)
        else:
          action = (sim.play_video_id, 0, 500)
        t2 = time.perf_counter()
        sim.step(*action)
        dt = time.perf_counter() - t2
        t_policy += t2 - t1
        t_env += dt + (t1 - t0)
        t_steps += dt
        steps += 1
    self.steps += steps
    self.t_env += t_env
    self.t_steps += t_steps
    self.t_policy += t_policy
    self.slices.append(steps / max(t_env + t_policy, 1e-12))
    self.env_slices.append(steps / max(t_env, 1e-12))

  def result(self) -> dict:
    return {"steps_per_s": float(np.median(self.slices)),
            "steps_per_s_slices": self.slices,
            "env_steps_per_s": float(np.median(self.env_slices)),
            "steps_per_s_without_resets": self.steps / max(self.t_steps, 1e-12),
            "policy_share": self.t_policy / max(self.t_env + self.t_policy, 1e-12),
            "steps": self.steps,
            "note": "median over slices interleaved with the JAX runs; steps_per_s: session "
                    "construction + observation + the random policy's choice + step (what "
                    "the JAX rollout times); env_steps_per_s: without the policy's choice; "
                    "steps_per_s_without_resets: sim.step alone"}


def time_jax(env, params, num_sessions: int, steps: int, repeats: int, seed: int,
             between=lambda: None) -> dict:
  """Compiles once, then times `repeats` rollouts of num_sessions x steps (`between` runs
  after each timed rollout, outside the timing)."""
  mesh = session_mesh()
  n_dev = mesh.devices.size
  num_sessions = -(-num_sessions // n_dev) * n_dev  # divisible by the device count
  rollout = make_autoreset_rollout(env, RandomValidPolicy(env), steps)
  run = jax.jit(shard_sessions(rollout, mesh, 1) if n_dev > 1 else rollout)
  keys = jax.random.split(jax.random.PRNGKey(seed), num_sessions)
  t0 = time.perf_counter()
  jax.block_until_ready(run(keys, params))
  compile_s = time.perf_counter() - t0
  times = []
  for r in range(repeats):
    keys = jax.random.split(jax.random.PRNGKey(seed + 1 + r), num_sessions)
    t0 = time.perf_counter()
    jax.block_until_ready(run(keys, params))
    times.append(time.perf_counter() - t0)
    between()
  med = float(np.median(times))
  return {"sessions": num_sessions, "steps_per_s": num_sessions * steps / med,
          "compile_s": compile_s, "run_s_median": med, "runs": repeats,
          "load_avg_1m": os.getloadavg()[0]}


def main(argv):
  del argv
  traces, _ = load_network_arg(FLAGS.network)
  videos, ladder = load_videos_arg(FLAGS.videos)
  env = FeedsEnv()
  params = env.make_params(pack_catalog(videos, ladder), pack_world(traces),
                           archetype_preferences(), watch_from_bank=False, random_offset=True,
                           shuffle_videos=len(videos) > env.num_videos)
  print(f"device: {device_description()}; traces: {len(traces)}; videos: {len(videos)}")
  reference = ReferenceTimer(traces, videos, ladder, FLAGS.seed)
  counts = [int(x) for x in FLAGS.sessions]
  slice_s = FLAGS.reference_seconds / max(1, len(counts) * FLAGS.repeats)
  rows = []
  for n in counts:
    first_slice = len(reference.slices)
    row = time_jax(env, params, n, FLAGS.steps, FLAGS.repeats, FLAGS.seed,
                   between=lambda: reference.run(slice_s))
    # The same-conditions ratio: against the reference slices run between this row's runs.
    row["ratio_vs_adjacent_reference"] = row["steps_per_s"] / float(
        np.median(reference.slices[first_slice:]))
    rows.append(row)
    print(f"jax  sessions={row['sessions']:>7}  steps/s={row['steps_per_s']:>14,.0f}  "
          f"compile={row['compile_s']:.2f}s  run={row['run_s_median']:.3f}s  "
          f"ratio={row['ratio_vs_adjacent_reference']:.1f}x", flush=True)
  ref = reference.result()
  best = max(r["steps_per_s"] for r in rows)
  result = {"jax": rows, "reference_python": ref, "best_ratio": best / ref["steps_per_s"],
            "best_ratio_adjacent": max(r["ratio_vs_adjacent_reference"] for r in rows),
            "best_ratio_vs_env_only": best / ref["env_steps_per_s"],
            "best_ratio_vs_step_only": best / ref["steps_per_s_without_resets"],
            "device": device_description(), "steps_per_session": FLAGS.steps,
            "jax_version": jax.__version__, "date": time.strftime("%Y-%m-%d")}
  print(f"python reference: {ref['steps_per_s']:,.0f} steps/s with its random policy (median "
        f"of {len(ref['steps_per_s_slices'])} slices; environment only "
        f"{ref['env_steps_per_s']:,.0f}, policy {100 * ref['policy_share']:.0f}% of the time; "
        f"{ref['steps_per_s_without_resets']:,.0f} steps/s for sim.step alone); "
        f"best ratio {result['best_ratio']:.1f}x, best same-conditions ratio "
        f"{result['best_ratio_adjacent']:.1f}x; vs the reference without the policy's choice "
        f"{result['best_ratio_vs_env_only']:.1f}x, vs sim.step alone "
        f"{result['best_ratio_vs_step_only']:.1f}x")
  write_json(FLAGS.json, result)


if __name__ == "__main__":
  app.run(main)

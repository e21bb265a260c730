r"""Environment throughput: scanned JAX rollouts vs the plain-Python reference.

    python -m experiments.benchmark_env --json=/tmp/bench_env.json

Measures environment steps/s of `make_autoreset_rollout` (auto-reset, a trivial
random-valid policy, sampled users and preferences, random trace offsets) for
several session counts, with the session axis sharded over every local device
(on CPU, one XLA host device per core). Compile time is reported separately;
steps/s is the median of --repeats timed runs. The plain-Python reference
simulator runs the same kind of sessions in the same process for the ratio.
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
flags.DEFINE_float("reference_seconds", 5.0, "how long to time the Python reference")
flags.DEFINE_string("json", None, "write the results as JSON here")
flags.DEFINE_integer("seed", 0, "PRNG seed")


def time_jax(env, params, num_sessions: int, steps: int, repeats: int, seed: int) -> dict:
  """Compiles once, then times `repeats` rollouts of num_sessions x steps."""
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
  med = float(np.median(times))
  return {"sessions": num_sessions, "steps_per_s": num_sessions * steps / med,
          "compile_s": compile_s, "run_s_median": med, "runs": repeats}


def time_reference(traces, videos, ladder, seconds: float, seed: int) -> dict:
  """Steps/s of the plain-Python reference with a random valid policy."""
  rnd = random.Random(seed)
  steps, t_env = 0, 0.0
  t_end = time.perf_counter() + seconds
  while time.perf_counter() < t_end:
    tr = traces[rnd.randrange(len(traces))]
    vids = [videos[i % len(videos)] for i in range(7)]
    watch = [rnd.randrange(0, v.num_chunks * 1000 + 1) for v in vids]
    sim = ReferenceSimulator(ReferenceSession(
        trace_times=tr.times_s.tolist(), trace_mbps=tr.bandwidth_mbps.tolist(),
        chunk_sizes=[v.chunk_sizes.tolist() for v in vids], watch_ms=watch,
        bitrates_kbps=tuple(ladder), start_row=rnd.randrange(1, len(tr))))
    while not sim.done and sim.metrics()["steps"] < 4096:
      slots = sim.slots()
      choices = [s.video_id for s in slots if s.chunk_counter < s.num_chunks]
      if choices and rnd.random() < 0.9:
        action = (rnd.choice(choices), rnd.randrange(len(ladder)), 0)
      else:
        action = (sim.play_video_id, 0, 500)
      t0 = time.perf_counter()
      sim.step(*action)
      t_env += time.perf_counter() - t0
      steps += 1
  return {"steps_per_s": steps / t_env, "steps": steps,
          "note": "environment time only (policy excluded)"}


def main(argv):
  del argv
  traces, _ = load_network_arg(FLAGS.network)
  videos, ladder = load_videos_arg(FLAGS.videos)
  env = FeedsEnv()
  params = env.make_params(pack_catalog(videos, ladder), pack_world(traces),
                           archetype_preferences(), watch_from_bank=False, random_offset=True,
                           shuffle_videos=len(videos) > env.num_videos)
  print(f"device: {device_description()}; traces: {len(traces)}; videos: {len(videos)}")
  rows = []
  for n in [int(s) for s in FLAGS.sessions]:
    row = time_jax(env, params, n, FLAGS.steps, FLAGS.repeats, FLAGS.seed)
    rows.append(row)
    print(f"jax  sessions={row['sessions']:>7}  steps/s={row['steps_per_s']:>14,.0f}  "
          f"compile={row['compile_s']:.2f}s  run={row['run_s_median']:.3f}s", flush=True)
  ref = time_reference(traces, videos, ladder, FLAGS.reference_seconds, FLAGS.seed)
  best = max(r["steps_per_s"] for r in rows)
  result = {"jax": rows, "reference_python": ref, "best_ratio": best / ref["steps_per_s"],
            "device": device_description(), "steps_per_session": FLAGS.steps,
            "jax_version": jax.__version__, "date": time.strftime("%Y-%m-%d")}
  print(f"python reference: {ref['steps_per_s']:,.0f} steps/s; best ratio {result['best_ratio']:.1f}x")
  write_json(FLAGS.json, result)


if __name__ == "__main__":
  app.run(main)

r"""Times the fused training update of a trained controller: compile once, then timed chunks.

    python -m experiments.time_training --config=experiments/configs/dam.py \
        --config.data.network=../shared/traces/network/oboe,../shared/traces/network/fcc \
        --config.data.skip_invalid_traces=True --config.data.split=train \
        --config.data.videos=../shared/traces/mmgc2022 --chunks=5 --json=/tmp/dam_speed.json

Same config flags as `experiments.train`. The training chunk (`train.updates_per_chunk`
fused updates: rollout of `num_sessions x rollout_steps` environment steps per seed, then
the learning epochs) is compiled ahead of time (compile seconds reported separately),
called once untimed, then `--chunks` timed calls; environment steps/s is
updates_per_chunk x num_sessions x rollout_steps x num_seeds / the median chunk time.
For Incendio, `--stage=imitation|mappo` picks which of its two programs is timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from experiments import common  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/dam.py", "training config")
flags.DEFINE_integer("chunks", 5, "timed chunk calls (after one untimed call)")
flags.DEFINE_enum("stage", "mappo", ["imitation", "mappo"], "incendio: which program to time")
flags.DEFINE_string("json", None, "write the result here")


def main(argv):
  if len(argv) > 1:
    common.fail("time_training", f"unexpected arguments {argv[1:]}")
  from gfnfeeds.training.loop import load_training_data, make_algorithm
  config = FLAGS.config
  data = load_training_data(config)
  algo = make_algorithm(config, data)
  chunk = algo.train_chunk
  if config.algorithm == "incendio":
    chunk = chunk.imitation if FLAGS.stage == "imitation" else chunk.mappo
  states = algo.init_states()
  if config.algorithm == "incendio" and FLAGS.stage == "mappo":
    imitation = int(config.incendio.imitation_updates)
    states = states.replace(step=jax.numpy.full_like(states.step, imitation))
  t0 = time.perf_counter()
  compiled = chunk.lower(states, data.params).compile()
  compile_s = time.perf_counter() - t0
  states, metrics = compiled(states, data.params)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(FLAGS.chunks):
    t0 = time.perf_counter()
    states, metrics = compiled(states, data.params)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  t = config.train
  steps = (int(t.updates_per_chunk) * int(t.num_sessions) * int(t.rollout_steps)
           * int(config.num_seeds))
  median = float(np.median(times))
  result = {"algorithm": config.algorithm, "stage": FLAGS.stage, "device": common.device_description(),
            "data": data.description, "compile_seconds": round(compile_s, 2),
            "chunk_seconds": [round(x, 4) for x in times], "median_chunk_seconds": round(median, 4),
            "env_steps_per_chunk": steps, "env_steps_per_s": round(steps / median, 1),
            "updates_per_s": round(int(t.updates_per_chunk) / median, 3),
            "load_average_1min": round(os.getloadavg()[0], 2)}
  print(json.dumps(result, indent=2))
  common.write_json(FLAGS.json, result)


if __name__ == "__main__":
  app.run(main)

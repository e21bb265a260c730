r"""Trains a controller: `python -m experiments.train --config=experiments/configs/gfn.py --workdir=DIR`.

Every config field can be overridden, e.g. `--config.gfn.loss=db --config.num_seeds=4
--config.data.network=../shared/traces/network --config.data.split=train`. Metrics go to
DIR/metrics.jsonl, checkpoints to DIR/checkpoints (a rerun with the same DIR resumes),
the trained controller to DIR/export (`experiments.evaluate --policy=gfn --checkpoint=DIR`).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import json  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import gfnfeeds  # noqa: E402,F401
from experiments import common  # noqa: E402
from gfnfeeds.data.types import DataError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "experiments/configs/gfn.py", "training config")
flags.DEFINE_string("workdir", None, "run directory (metrics, checkpoints, export)")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    common.fail("train", f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from gfnfeeds.training.loop import train_and_evaluate
  try:
    last = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (DataError, ValueError, OSError) as e:
    common.fail("train", str(e))
  print(json.dumps(last, indent=2))


if __name__ == "__main__":
  app.run(main)

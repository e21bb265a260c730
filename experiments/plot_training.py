r"""Plots training curves (objective vs environment steps) from training workdirs.

    python -m experiments.plot_training --workdirs=/tmp/dam_default --output=experiments/figures/dam_training.png
    python -m experiments.plot_training --workdirs=/tmp/a,/tmp/b --labels=A,B \
        --metrics=ended_score,eval_score,train_reward --output=/tmp/curves.png

Reads each WORKDIR/metrics.jsonl (one record per chunk, written by
gfnfeeds.training.loop) and WORKDIR/config.json (environment steps per update =
train.num_sessions x train.rollout_steps x num_seeds). Training metrics are per-chunk
means of seed 0; `eval_*` metrics come from the periodic evaluations. One panel per
metric. Needs matplotlib (`pip install -e .[plots]`).
"""

from __future__ import annotations

import json
import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", None, "training workdirs (metrics.jsonl + config.json)")
flags.DEFINE_list("labels", None, "legend labels (default: the workdir names)")
flags.DEFINE_list("metrics", ["ended_score", "eval_score", "train_reward", "entropy"],
                  "metrics to plot, one panel each (eval_* from the periodic evaluations)")
flags.DEFINE_string("output", "training_curves.png", "PNG to write")
flags.DEFINE_string("title", None, "figure title")
flags.mark_flag_as_required("workdirs")


def fail(message: str) -> None:
  import sys
  print(f"plot_training: error: {message}", file=sys.stderr)
  sys.exit(2)


def read_curves(workdir: str, metrics) -> dict[str, tuple[list[float], list[float]]]:
  """{metric: (environment steps, values)} of seed 0 in `workdir`."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  steps_per_update = (int(config["train.num_sessions"]) * int(config["train.rollout_steps"])
                      * int(config.get("num_seeds", 1)))
  curves = {m: ([], []) for m in metrics}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      x = record["update"] * steps_per_update
      values = dict(record["seeds"][0], **(record.get("eval") or [{}])[0])
      for m in metrics:
        if m in values:
          curves[m][0].append(x)
          curves[m][1].append(values[m])
  return curves


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}")
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    fail("matplotlib is not installed; install the optional extra: pip install -e .[plots]")
  labels = FLAGS.labels or [os.path.basename(os.path.normpath(w)) for w in FLAGS.workdirs]
  if len(labels) != len(FLAGS.workdirs):
    fail(f"{len(labels)} labels for {len(FLAGS.workdirs)} workdirs")
  try:
    runs = [read_curves(w, FLAGS.metrics) for w in FLAGS.workdirs]
  except (OSError, KeyError, ValueError) as e:
    fail(f"cannot read a workdir: {e}")
  n = len(FLAGS.metrics)
  fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
  for ax, metric in zip(axes[0], FLAGS.metrics):
    for label, curves in zip(labels, runs):
      xs, ys = curves[metric]
      if xs:
        ax.plot(xs, ys, label=label, marker="o" if metric.startswith("eval_") else None,
                markersize=3)
    ax.set_title(metric)
    ax.set_xlabel("environment steps")
    ax.grid(alpha=0.3)
  axes[0][0].legend()
  if FLAGS.title:
    fig.suptitle(FLAGS.title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  fig.savefig(FLAGS.output, dpi=110)
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  app.run(main)

"""The host loop shared by every trained controller: data, chunks, metrics, checkpoints.

`train_and_evaluate(config, workdir)` (Flax-examples style) loads the data the
config names, builds the algorithm (`config.algorithm`), and then repeats:
one jitted chunk of fused updates on the device -> metrics to
`workdir/metrics.jsonl` and the progress bar -> periodic evaluation -> an orbax
checkpoint of the whole train state in `workdir/checkpoints`. A run that finds
a checkpoint in its workdir resumes from the newest one; because the train
state holds everything (parameters, optimizer, live sessions, PRNG key) and a
chunk is a pure function of it, the resumed run ends with the same parameters
as an uninterrupted one. At the end the trained controller is exported to
`workdir/export` (its settings as JSON plus its parameters), which is what the
evaluation program's `--checkpoint` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gfnfeeds import evaluation
from gfnfeeds.data import traces as trace_io
from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.env.feeds import EnvParams, FeedsEnv
from gfnfeeds.env.preferences import archetype_preferences, fixed_preferences

# Fields that may change when a run is resumed (they do not change what a chunk computes).
RESUMABLE_FIELDS = ("train.num_updates", "train.eval_every", "train.checkpoint_every",
                    "train.progress", "train.eval_sessions")


@dataclasses.dataclass
class TrainingData:
  env: FeedsEnv
  params: EnvParams
  eval_table: evaluation.SessionTable
  description: str


def load_training_data(config: ml_collections.ConfigDict) -> TrainingData:
  """The environment, its params and the periodic-evaluation sessions of `config.data`.

  Raises:
    ValueError: bad data settings or files (the message names them).
  """
  d = config.data
  traces, _ = load_network_arg(d.network, "skip" if d.skip_invalid_traces else "raise")
  traces = trace_io.filter_traces(traces, trace_class=d.trace_class, split=d.split)
  if not traces:
    raise ValueError(f"no traces left in data.network={d.network!r} after "
                     f"trace_class={d.trace_class} split={d.split}")
  videos, ladder = load_videos_arg(d.videos)
  env = FeedsEnv(reference_quirks=d.reference_quirks, max_steps=config.env.max_steps)
  catalog = pack_catalog(videos, ladder)
  if d.preferences not in ("sampled", "mmgc"):
    raise ValueError(f"data.preferences must be 'sampled' or 'mmgc', got {d.preferences!r}")
  prefs = archetype_preferences() if d.preferences == "sampled" else fixed_preferences()
  world = pack_world(traces)  # no fixed users: training users come from the retention curves
  params = env.make_params(catalog, world, prefs, random_offset=bool(d.random_offset),
                           shuffle_videos=len(videos) > env.num_videos)
  table = evaluation.build_sessions(
      env, videos, catalog, [t.name for t in traces], [len(t) for t in traces],
      f"sampled:{max(1, -(-config.train.eval_sessions // len(traces)))}", d.preferences, prefs,
      config.seed + 10_000, config.train.eval_sessions, False)
  return TrainingData(env=env, params=params, eval_table=table,
                      description=f"{len(traces)} traces, {len(videos)} videos")


def _flatten(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  out = {}
  for k, v in config.items():
    name = f"{prefix}{k}"
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flatten(v, name + "."))
    else:
      out[name] = list(v) if isinstance(v, tuple) else v
  return out


def check_resume_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes workdir/config.json, or checks that a resumed run uses the same settings.

  Raises:
    ValueError: the workdir holds a run with different settings (names the fields).
  """
  path = os.path.join(workdir, "config.json")
  flat = _flatten(config)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = sorted(k for k in set(old) | set(flat)
                  if k not in RESUMABLE_FIELDS and old.get(k) != flat.get(k))
    if diff:
      changes = ", ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in diff)
      raise ValueError(f"{workdir} holds a run with other settings ({changes}); "
                       f"use a new --workdir or the same config")
  with open(path, "w") as f:
    json.dump(flat, f, indent=2, sort_keys=True)


@dataclasses.dataclass
class Algorithm:
  """What the loop needs from a trainable controller.

  Attributes:
    init_states: `() -> train states` (leading seed axis), placed on devices.
    train_chunk: jitted `(states, env_params) -> (states, metrics of [seeds, updates])`.
    evaluate: `(states, seed_index, data) -> dict of floats` (periodic evaluation).
    export: `(states, seed_index, directory) -> None` (the trained controller).
    updates_per_chunk: updates per `train_chunk` call.
    place: `states -> states` (device placement after a restore).
  """

  init_states: Callable[[], Any]
  train_chunk: Callable
  evaluate: Callable
  export: Callable
  updates_per_chunk: int
  place: Callable[[Any], Any] = lambda s: s


# config.algorithm -> module with `make(config, data) -> Algorithm`, imported on use.
ALGORITHMS = {
    "gfn": "gfnfeeds.training.gfn_algorithm",
    "incendio": "gfnfeeds.training.incendio_algorithm",
    "dam": "gfnfeeds.training.dam_algorithm",
}


def make_algorithm(config: ml_collections.ConfigDict, data: TrainingData) -> Algorithm:
  """The algorithm named by `config.algorithm` (a key of ALGORITHMS)."""
  if config.algorithm not in ALGORITHMS:
    raise ValueError(f"unknown config.algorithm {config.algorithm!r}; expected one of "
                     f"{', '.join(ALGORITHMS)}")
  import importlib
  return importlib.import_module(ALGORITHMS[config.algorithm]).make(config, data)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_chunks: int | None = None) -> dict:
  """Trains (or resumes) in `workdir`; returns the last chunk's metrics of seed 0.

  `stop_after_chunks` ends the process's work early, after that many chunks and
  their checkpoint (what a killed run leaves behind; used by the resume test).
  """
  os.makedirs(workdir, exist_ok=True)
  check_resume_config(workdir, config)
  data = load_training_data(config)
  algo = make_algorithm(config, data)
  per_chunk = algo.updates_per_chunk
  total_chunks = -(-int(config.train.num_updates) // per_chunk)
  ckpt_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
  manager = ocp.CheckpointManager(
      ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  states = algo.init_states()
  start_chunk = 0
  latest = manager.latest_step()
  if latest is not None:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, states)
    states = algo.place(manager.restore(latest, args=ocp.args.StandardRestore(abstract)))
    start_chunk = latest
    print(f"resumed from {ckpt_dir}/{latest} (update {latest * per_chunk})", flush=True)
  log_path = os.path.join(workdir, "metrics.jsonl")
  bar = None
  if config.train.progress and start_chunk < total_chunks:
    from tqdm import tqdm
    bar = tqdm(total=total_chunks * per_chunk, initial=start_chunk * per_chunk, unit="update",
               file=sys.stderr)
  last: dict = {}
  t_start = time.perf_counter()
  done_here = 0
  for chunk in range(start_chunk, total_chunks):
    t0 = time.perf_counter()
    states, metrics = algo.train_chunk(states, data.params)
    per_seed = _per_seed_means(metrics)
    wall = time.perf_counter() - t0
    record = {"update": (chunk + 1) * per_chunk, "chunk_seconds": round(wall, 4),
              "includes_compile": chunk == start_chunk,
              "updates_per_s": round(per_chunk / wall, 3), "seeds": per_seed}
    if config.train.eval_every and ((chunk + 1) % config.train.eval_every == 0
                                    or chunk + 1 == total_chunks):
      record["eval"] = [algo.evaluate(states, s, data) for s in range(len(per_seed))]
    with open(log_path, "a") as f:
      f.write(json.dumps(record) + "\n")
    last = dict(per_seed[0], **(record.get("eval", [{}])[0]))
    if bar is not None:
      bar.update(per_chunk)
      bar.set_postfix(loss=f"{per_seed[0].get('loss', float('nan')):.3g}",
                      score=f"{per_seed[0].get('ended_score', float('nan')):.2f}")
    done_here += 1
    final = chunk + 1 == total_chunks
    if final or (chunk + 1) % config.train.checkpoint_every == 0 or (
        stop_after_chunks is not None and done_here >= stop_after_chunks):
      manager.save(chunk + 1, args=ocp.args.StandardSave(states))
      manager.wait_until_finished()
    if stop_after_chunks is not None and done_here >= stop_after_chunks and not final:
      break
  else:
    algo.export(states, 0, os.path.join(workdir, "export"))
  if bar is not None:
    bar.close()
  manager.close()
  last["wall_seconds"] = round(time.perf_counter() - t_start, 3)
  return last


def _per_seed_means(metrics: dict) -> list[dict]:
  host = {k: np.asarray(v) for k, v in metrics.items()}
  seeds = next(iter(host.values())).shape[0]
  return [{k: float(np.mean(v[s])) for k, v in host.items()} for s in range(seeds)]

"""One export format for every trained controller (GFlowNet, DAM, Incendio).

An export directory holds `controller.json` (the controller's settings, the algorithm's name and
the environment it acts in) and `params/` (orbax). A training workdir keeps its export in
`export/`; `read_export` accepts either. The same module gives each algorithm its periodic
evaluation and export hooks for the shared training loop, so the three algorithms differ only
in their settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gfnfeeds import evaluation
from gfnfeeds.env.feeds import FeedsEnv

EXPORT_VERSION = 1
# What changes the discrete action set or the observation features, hence the networks' shapes.
ACTION_SET_KEYS = ("window", "num_levels", "sleep_choices_ms", "history_len")
EVAL_METRICS = ("score", "qoe", "rebuffer_s", "bandwidth_mb", "wastage_pct")


def env_spec(env: FeedsEnv) -> dict:
  """The environment facts an export records (the number of videos for information only)."""
  return {"window": env.window, "num_levels": env.num_levels_hint,
          "sleep_choices_ms": list(env.sleep_choices_ms), "history_len": env.history_len,
          "num_videos": env.num_videos}


def write_export(directory: str, algorithm: str, env: FeedsEnv, settings: dict, params) -> None:
  """Writes `settings` (JSON-able) and `params` (host arrays) as an export of `algorithm`."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  spec = {"version": EXPORT_VERSION, "algorithm": algorithm, "env": env_spec(env), **settings}
  with open(os.path.join(directory, "controller.json"), "w") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, "params"), params, force=True)
  checkpointer.wait_until_finished()


def read_export(directory: str, algorithm: str, env: FeedsEnv,
                match: Sequence[str] = ACTION_SET_KEYS) -> tuple[str, dict]:
  """(export directory, its controller.json) after checking it fits `algorithm` and `env`.

  Args:
    directory: an export directory or a training workdir (then its export/).
    algorithm: the name the export must carry.
    env: the environment the controller will act in.
    match: env_spec keys that must agree (those the networks' shapes depend on).

  Raises:
    ValueError: no export there, one of another algorithm, or one made for an environment
      that differs in a `match` key; the message names the directory.
  """
  directory = os.path.abspath(directory)
  if not os.path.exists(os.path.join(directory, "controller.json")):
    nested = os.path.join(directory, "export")
    if not os.path.exists(os.path.join(nested, "controller.json")):
      raise ValueError(f"{directory}: no controller.json (expected an export directory or a "
                       f"training workdir with export/)")
    directory = nested
  with open(os.path.join(directory, "controller.json")) as f:
    spec = json.load(f)
  if spec.get("algorithm") != algorithm:
    raise ValueError(f"{directory}: not a {algorithm} export "
                     f"(algorithm={spec.get('algorithm')!r})")
  want, have = env_spec(env), spec.get("env", {})
  differ = [k for k in match if _plain(have.get(k)) != _plain(want[k])]
  if differ:
    raise ValueError(f"{directory}: trained for "
                     + ", ".join(f"{k}={have.get(k)}" for k in differ)
                     + "; the environment has " + ", ".join(f"{k}={want[k]}" for k in differ))
  return directory, spec


def _plain(value):
  return tuple(value) if isinstance(value, list | tuple) else value


def restore_params(directory: str, like) -> Any:
  """The export's parameters, restored to the structure of `like`, as host numpy arrays.

  Host arrays (not committed to one device): the caller's jit places them, e.g. replicated
  over the session mesh.
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), abstract)
  return jax.tree.map(np.asarray, params)


def seed_params(states, seed_index: int, host: bool = False):
  """One seed's parameters from train states with a leading seed axis."""
  take = (lambda x: np.asarray(x[seed_index])) if host else (lambda x: x[seed_index])
  return jax.tree.map(take, states.params)


def loop_hooks(config: ml_collections.ConfigDict, serving,
               save: Callable[[str, Any, Any], None]) -> tuple[Callable, Callable]:
  """(evaluate, export) for `Algorithm`: evaluate `serving` with one seed's parameters on the
  data's evaluation sessions; export it with `save(directory, serving, params)`."""

  def evaluate(states, seed_index, data) -> dict:
    metrics = evaluation.run_sessions(data.env, serving, data.params, data.eval_table,
                                      int(config.seed),
                                      policy_params=seed_params(states, seed_index))
    return {f"eval_{k}": float(np.mean(metrics[k])) for k in EVAL_METRICS}

  def export(states, seed_index, directory):
    save(directory, serving, seed_params(states, seed_index, host=True))

  return evaluate, export

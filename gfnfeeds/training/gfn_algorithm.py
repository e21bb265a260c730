"""The GFlowNet controller as a trainable algorithm of the shared loop, and its export format.

Export directory layout (what `experiments.evaluate --checkpoint=DIR` reads):
  controller.json   the controller's settings (horizon, K, belief model, network
                    shape, loss, the environment's discrete action set)
  params/           the network parameters (orbax StandardCheckpointer)
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gfnfeeds import evaluation
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.planning.belief import BeliefConfig
from gfnfeeds.policies.gfn import GFNController
from gfnfeeds.training import gfn_trainer
from gfnfeeds.training.loop import Algorithm, TrainingData

EXPORT_VERSION = 1


def controller_from_config(config: ml_collections.ConfigDict, env: FeedsEnv) -> GFNController:
  """The GFNController that `config.gfn` describes, acting in `env`."""
  g = config.gfn
  belief = BeliefConfig(num_scenarios=int(g.num_scenarios), prior_mbps=float(g.prior_mbps),
                        terminal_weight=float(g.terminal_weight),
                        terminal_horizon_ms=int(g.terminal_horizon_ms),
                        swipe_in_flight=bool(g.get("swipe_in_flight", False)))
  return GFNController(env=env, horizon=int(g.horizon), num_candidates=int(g.num_candidates),
                       belief=belief, hidden=tuple(int(h) for h in g.hidden),
                       flow_head=g.loss != "tb", epsilon=float(g.epsilon),
                       temperature=float(g.temperature))


def settings_from_config(config: ml_collections.ConfigDict,
                         env: FeedsEnv) -> gfn_trainer.GFNTrainSettings:
  g, t = config.gfn, config.train
  return gfn_trainer.GFNTrainSettings(
      controller=controller_from_config(config, env), loss=g.loss, lamda=float(g.lamda),
      reward_temperature=float(g.reward_temperature), num_sessions=int(t.num_sessions),
      rollout_steps=int(t.rollout_steps), relabel=int(t.relabel),
      learning_rate=float(t.learning_rate), log_z_learning_rate=float(t.log_z_learning_rate),
      max_grad_norm=float(t.max_grad_norm), updates_per_chunk=int(t.updates_per_chunk))


def make(config: ml_collections.ConfigDict, data: TrainingData) -> Algorithm:
  settings = settings_from_config(config, data.env)
  num_seeds = int(config.num_seeds)
  chunk = gfn_trainer.make_train_chunk(settings, num_seeds)
  serving = dataclasses.replace(settings.controller, epsilon=0.0, temperature=1.0)

  def init_states():
    states = gfn_trainer.init_train_states(int(config.seed), num_seeds, settings, data.params)
    return gfn_trainer.shard_train_state(states)

  def evaluate(states, seed_index, data: TrainingData) -> dict:
    params = jax.tree.map(lambda x: x[seed_index], states.params)
    metrics = evaluation.run_sessions(data.env, serving, data.params, data.eval_table,
                                      int(config.seed), policy_params=params)
    return {f"eval_{k}": float(np.mean(metrics[k]))
            for k in ("score", "qoe", "rebuffer_s", "bandwidth_mb", "wastage_pct")}

  def export(states, seed_index, directory):
    params = jax.tree.map(lambda x: np.asarray(x[seed_index]), states.params)
    save_controller(directory, serving, params, loss=settings.loss)

  return Algorithm(init_states=init_states, train_chunk=chunk, evaluate=evaluate, export=export,
                   updates_per_chunk=settings.updates_per_chunk,
                   place=gfn_trainer.shard_train_state)


def save_controller(directory: str, controller: GFNController, params, loss: str = "tb") -> None:
  """Writes a trained controller (settings + parameters) to `directory`."""
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  env = controller.env
  spec = {
      "version": EXPORT_VERSION, "loss": loss, "horizon": controller.horizon,
      "num_candidates": controller.num_candidates, "hidden": list(controller.hidden),
      "flow_head": controller.flow_head, "belief": dataclasses.asdict(controller.belief),
      "env": {"window": env.window, "num_levels": env.num_levels_hint,
              "sleep_choices_ms": list(env.sleep_choices_ms), "history_len": env.history_len},
  }
  with open(os.path.join(directory, "controller.json"), "w") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  target = os.path.join(directory, "params")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, params, force=True)
  checkpointer.wait_until_finished()


def load_controller(directory: str, env: FeedsEnv) -> tuple[GFNController, object]:
  """(controller, params) from an export directory or a training workdir (its export/).

  Raises:
    ValueError: no export there, or one made for another discrete action set.
  """
  directory = os.path.abspath(directory)
  if not os.path.exists(os.path.join(directory, "controller.json")):
    nested = os.path.join(directory, "export")
    if os.path.exists(os.path.join(nested, "controller.json")):
      directory = nested
    else:
      raise ValueError(f"{directory}: no controller.json (expected an export directory or a "
                       f"training workdir with export/)")
  with open(os.path.join(directory, "controller.json")) as f:
    spec = json.load(f)
  e = spec["env"]
  if (e["window"], e["num_levels"], tuple(e["sleep_choices_ms"]), e["history_len"]) != (
      env.window, env.num_levels_hint, env.sleep_choices_ms, env.history_len):
    raise ValueError(f"{directory}: trained for window={e['window']}, levels={e['num_levels']}, "
                     f"sleeps={e['sleep_choices_ms']}, history={e['history_len']}; the "
                     f"environment has {env.window}, {env.num_levels_hint}, "
                     f"{list(env.sleep_choices_ms)}, {env.history_len}")
  controller = GFNController(env=env, horizon=int(spec["horizon"]),
                             num_candidates=int(spec["num_candidates"]),
                             belief=BeliefConfig(**spec["belief"]),
                             hidden=tuple(spec["hidden"]), flow_head=bool(spec["flow_head"]))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          controller.init_params(jax.random.PRNGKey(0)))
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), abstract)
  # Host arrays (not committed to one device): the caller's jit places them, e.g.
  # replicated over the session mesh.
  return controller, jax.tree.map(np.asarray, params)

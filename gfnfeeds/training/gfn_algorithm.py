"""The GFlowNet controller as a trainable algorithm of the shared loop, and its export format.

Export directory layout (what `experiments.evaluate --checkpoint=DIR` reads):
  controller.json   the controller's settings (horizon, K, belief model, network
                    shape, loss, the environment's discrete action set)
  params/           the network parameters (orbax StandardCheckpointer)
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.planning.belief import BeliefConfig
from gfnfeeds.policies.gfn import GFNController
from gfnfeeds.training import gfn_trainer
from gfnfeeds.training.export import loop_hooks, read_export, restore_params, write_export
from gfnfeeds.training.loop import Algorithm, TrainingData


def controller_from_config(config: ml_collections.ConfigDict, env: FeedsEnv) -> GFNController:
  """The GFNController that `config.gfn` describes, acting in `env`."""
  g = config.gfn
  # Every BeliefConfig field is a `config.gfn` field of the same name; a config
  # without one (e.g. an older run's config.json) keeps the BeliefConfig default.
  belief = BeliefConfig(**{f.name: type(f.default)(g[f.name])
                           for f in dataclasses.fields(BeliefConfig) if f.name in g})
  return GFNController(env=env, horizon=int(g.horizon), num_candidates=int(g.num_candidates),
                       belief=belief, hidden=tuple(int(h) for h in g.hidden),
                       flow_head=g.loss != "tb", epsilon=float(g.epsilon),
                       temperature=float(g.temperature),
                       candidates=str(g.get("candidates", "iid")),
                       sleep_while_stalled=bool(g.get("sleep_while_stalled", False)))


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

  evaluate, export = loop_hooks(
      config, serving, lambda d, c, p: save_controller(d, c, p, loss=settings.loss))

  return Algorithm(init_states=init_states, train_chunk=chunk, evaluate=evaluate, export=export,
                   updates_per_chunk=settings.updates_per_chunk,
                   place=gfn_trainer.shard_train_state)


def save_controller(directory: str, controller: GFNController, params, loss: str = "tb") -> None:
  """Writes a trained controller (settings + parameters) to `directory`."""
  write_export(directory, "gfn", controller.env, {
      "loss": loss, "horizon": controller.horizon, "num_candidates": controller.num_candidates,
      "hidden": list(controller.hidden), "flow_head": controller.flow_head,
      "candidates": controller.candidates,
      "sleep_while_stalled": controller.sleep_while_stalled,
      "belief": dataclasses.asdict(controller.belief)}, params)


def load_controller(directory: str, env: FeedsEnv) -> tuple[GFNController, object]:
  """(controller, params) from an export directory or a training workdir (its export/).

  Raises:
    ValueError: no export there, one of another algorithm, or one made for another discrete
      action set.
  """
  directory, spec = read_export(directory, "gfn", env)
  controller = GFNController(env=env, horizon=int(spec["horizon"]),
                             num_candidates=int(spec["num_candidates"]),
                             belief=BeliefConfig(**spec["belief"]),
                             hidden=tuple(spec["hidden"]), flow_head=bool(spec["flow_head"]),
                             candidates=str(spec.get("candidates", "iid")),
                             sleep_while_stalled=bool(spec.get("sleep_while_stalled", False)))
  return controller, restore_params(directory, controller.init_params(jax.random.PRNGKey(0)))

"""Training the GFlowNet controller in the feeds environment (PureJaxRL style).

One update, entirely on the device:
  1. rollout: `rollout_steps` decisions in `num_sessions` sessions (vmapped,
     sharded over local devices on the session axis, auto-reset). The behaviour
     is the controller itself: the GFlowNet samples K plans with exploration
     (epsilon, temperature), the belief model scores them, the argmax selector
     acts. Every visited decision contributes its K scored plans;
  2. relabelling: each decision's plans are re-scored for `relabel` other
     preference vectors drawn from the sampler (a dot product with the stored
     outcome components, SYSTEM.md section 6) and the network is conditioned on
     them, so every rollout trains the sampler for many users;
  3. loss (TB, DB, SubTB or FM) on the teacher-forced plans
     (`gfnfeeds.gfn.replay`), log R = U_w / reward_temperature, and one optax step
     (Adam; log Z with its own learning rate; global-norm clipping).
`updates_per_chunk` updates are fused in one `lax.scan` per dispatch; between
chunks the host writes metrics, evaluates, and saves an orbax checkpoint of the
whole train state (parameters, optimizer, the live sessions, the PRNG key), so a
killed run resumes from its last checkpoint and ends bit-identical to an
uninterrupted one. Seeds are vmapped (`num_seeds`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from gfnfeeds.env.feeds import EnvParams
from gfnfeeds.env.rollout import place_seed_states
from gfnfeeds.gfn import losses
from gfnfeeds.gfn.networks import MLPPolicy
from gfnfeeds.gfn.replay import replay_trajectories
from gfnfeeds.gfn.train import LOSSES, make_optimizer
from gfnfeeds.planning import belief as belief_lib
from gfnfeeds.policies.gfn import GFNController, plan_cond, prefix_tree_policy_fn

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class GFNTrainSettings:
  """The static settings of one training run (hashable).

  Attributes:
    controller: the controller being trained (its K, H, belief, network shape).
    loss: "tb", "db", "subtb" or "fm".
    lamda: SubTB's lambda.
    reward_temperature: tau in log R = U_w / tau.
    num_sessions: sessions rolled out in parallel per seed.
    rollout_steps: decisions per session per update.
    relabel: extra preference vectors per decision.
    learning_rate, log_z_learning_rate, max_grad_norm: the optimizer.
    updates_per_chunk: updates fused in one dispatch.
  """

  controller: GFNController
  loss: str = "tb"
  lamda: float = 0.9
  reward_temperature: float = 0.25
  num_sessions: int = 32
  rollout_steps: int = 8
  relabel: int = 1
  learning_rate: float = 1e-3
  log_z_learning_rate: float = 1e-2
  max_grad_norm: float = 10.0
  updates_per_chunk: int = 10

  def __post_init__(self):
    if self.loss not in LOSSES:
      raise ValueError(f"unknown GFlowNet loss {self.loss!r}; expected one of {LOSSES}")
    if self.controller.num_candidates < 2:
      raise ValueError("training scores K >= 2 candidates per decision "
                       f"(got num_candidates={self.controller.num_candidates})")
    if self.controller.flow_head != (self.loss != "tb"):
      raise ValueError(f"loss {self.loss!r} needs flow_head={self.loss != 'tb'}")


@struct.dataclass
class TrainState:
  """Everything a resumed run needs (a pytree of arrays: one orbax checkpoint)."""

  params: Any
  opt_state: Any
  obs: Any          # [num_sessions] Observation
  env_state: Any    # [num_sessions] EnvState
  key: jax.Array
  step: jax.Array


def make_optimizer_for(settings: GFNTrainSettings):
  return optax.chain(optax.clip_by_global_norm(settings.max_grad_norm),
                     make_optimizer(settings.learning_rate, settings.log_z_learning_rate))


def init_train_state(key: jax.Array, settings: GFNTrainSettings,
                     env_params: EnvParams) -> TrainState:
  """Fresh parameters, optimizer state and `num_sessions` freshly reset sessions."""
  ctrl = settings.controller
  k_init, k_reset, k_run = jax.random.split(key, 3)
  params = ctrl.init_params(k_init)
  opt_state = make_optimizer_for(settings).init(params)
  obs, env_state = jax.vmap(ctrl.env.reset, in_axes=(0, None))(
      jax.random.split(k_reset, settings.num_sessions), env_params)
  return TrainState(params=params, opt_state=opt_state, obs=obs, env_state=env_state,
                    key=k_run, step=jnp.zeros((), jnp.int32))


def _loss(settings: GFNTrainSettings, params, cond, actions, log_rewards):
  ctrl = settings.controller
  model = ctrl.model
  k = ctrl.num_candidates
  # Plans of one decision and one w share s_0: the network runs it once (and skips
  # the exit-only s_H unless the loss reads its flow); the same loss, fewer rows.
  policy_fn = prefix_tree_policy_fn(model.apply, ctrl.horizon, k, settings.loss != "tb")
  traj = replay_trajectories(ctrl.dag, policy_fn, params, cond, actions, log_rewards)
  if settings.loss == "tb":
    log_z = model.apply(params, traj.cond_features[::k], method=MLPPolicy.log_z)
    return losses.trajectory_balance(traj, jnp.repeat(log_z, k))
  if settings.loss == "db":
    return losses.detailed_balance(traj)
  if settings.loss == "subtb":
    return losses.subtrajectory_balance(traj, settings.lamda)
  inflows = losses.parent_log_inflows(ctrl.dag, model.apply, params, traj)
  return losses.flow_matching(traj, inflows)


class UpdatePhases(NamedTuple):
  """The two halves of one update, as pure functions (for benchmarks and diagnostics).

  Attributes:
    rollout: `(params, obs, env_state, key, env_params) -> (obs, env_state, data, stats)`:
      `rollout_steps` decisions of every session; `data` holds each decision's
      features, weights, masks, K plans and their outcome components ([T, B, ...]),
      `stats` the per-step rollout statistics.
    learn: `(params, opt_state, data, key, env_params) -> (params, opt_state, diag, grads)`:
      relabelling, the loss on the rollout's plans and one optimizer step.
  """

  rollout: Callable
  learn: Callable


def make_update_phases(settings: GFNTrainSettings) -> UpdatePhases:
  """The rollout and learning halves of `make_update`'s update (one implementation)."""
  ctrl = settings.controller
  env = ctrl.env
  horizon = ctrl.horizon
  optimizer = make_optimizer_for(settings)
  exit_action = ctrl.dag.exit_action

  def rollout(params, obs, env_state, key, env_params):
    catalog = env_params.catalog

    def one_step(carry, k):
      obs, env_state = carry
      keys = jax.random.split(k, 2 * settings.num_sessions).reshape(2, settings.num_sessions, -1)
      dec = jax.vmap(ctrl.decide, in_axes=(0, None, 0, None))(keys[0], params, obs, catalog)
      obs, env_state, reward, term, trunc, info = env.step_batch(
          keys[1], env_state, dec.action_index, env_params)
      done = term | trunc
      score = info["metrics"]["score"]
      stats = dict(reward=jnp.mean(reward), ended=jnp.sum(done),
                   ended_score=jnp.sum(jnp.where(done, score, 0.0)),
                   best_utility=jnp.mean(jnp.take_along_axis(dec.utilities, dec.best[:, None],
                                                             axis=1)),
                   mean_utility=jnp.mean(dec.utilities))
      data = dict(obs_features=dec.obs_features, weights=dec.weights, remaining=dec.remaining,
                  sleep_ok=dec.sleep_ok,
                  plans=dec.plans, components=dec.components)
      return (obs, env_state), (data, stats)

    (obs, env_state), (data, stats) = jax.lax.scan(
        one_step, (obs, env_state), jax.random.split(key, settings.rollout_steps))
    return obs, env_state, data, stats

  def learn(params, opt_state, data, key, env_params):
    # [T, B, ...] -> [N, ...] decisions.
    data = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), data)
    n = data["weights"].shape[0]
    k = ctrl.num_candidates
    extra = jax.vmap(env_params.preferences.sample)(
        jax.random.split(key, n * settings.relabel)).reshape(n, settings.relabel, 4)
    weights = jnp.concatenate([data["weights"][:, None], extra], axis=1)  # [N, 1+R, 4]
    groups = 1 + settings.relabel
    log_rewards = (belief_lib.utility(data["components"][:, None, :, :], weights[:, :, None, :])
                   / settings.reward_temperature).astype(F32)  # [N, 1+R, K]

    # K innermost: each run of K rows is one (decision, w), as prefix_tree_policy_fn needs.
    def expand(x):  # [N, ...] -> [N * (1+R) * K, ...]
      x = jnp.broadcast_to(x[:, None, None], (n, groups, k) + x.shape[1:])
      return x.reshape((-1,) + x.shape[3:])

    cond = jax.vmap(plan_cond)(expand(data["obs_features"]),
                               jnp.broadcast_to(weights[:, :, None], (n, groups, k, 4)
                                                ).reshape(-1, 4),
                               expand(data["remaining"]), expand(data["sleep_ok"]))
    plans = jnp.broadcast_to(data["plans"][:, None], (n, groups, k, horizon)).reshape(-1, horizon)
    actions = jnp.concatenate([plans, jnp.full((plans.shape[0], 1), exit_action, jnp.int32)],
                              axis=1)

    def loss_fn(params):
      return _loss(settings, params, cond, actions, log_rewards.reshape(-1))

    (_, diag), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, diag, grads

  return UpdatePhases(rollout=rollout, learn=learn)


def make_update(settings: GFNTrainSettings) -> Callable:
  """`update(train_state, env_params) -> (train_state, metrics)`: one rollout + one step."""
  phases = make_update_phases(settings)

  def update(state: TrainState, env_params: EnvParams):
    key, k_roll, k_relabel = jax.random.split(state.key, 3)
    obs, env_state, data, stats = phases.rollout(state.params, state.obs, state.env_state,
                                                 k_roll, env_params)
    params, opt_state, diag, grads = phases.learn(state.params, state.opt_state, data,
                                                  k_relabel, env_params)
    ended = stats["ended"].sum()
    metrics = dict(diag, grad_norm=optax.tree.norm(grads), reward=jnp.mean(stats["reward"]),
                   sessions_ended=ended,
                   ended_score=stats["ended_score"].sum() / jnp.maximum(ended, 1),
                   best_utility=jnp.mean(stats["best_utility"]),
                   mean_utility=jnp.mean(stats["mean_utility"]))
    metrics = jax.tree.map(lambda m: jnp.asarray(m, F32), metrics)
    new = TrainState(params=params, opt_state=opt_state, obs=obs, env_state=env_state, key=key,
                     step=state.step + 1)
    return new, metrics

  return update


def make_train_chunk(settings: GFNTrainSettings, num_seeds: int = 1) -> Callable:
  """`chunk(train_states, env_params) -> (train_states, metrics)`, jitted.

  `updates_per_chunk` updates fused in one scan; train states carry a leading
  seed axis of size `num_seeds` (vmapped); metrics are [seeds, updates].
  """
  update = make_update(settings)

  def chunk(state, env_params):
    return jax.lax.scan(lambda s, _: update(s, env_params), state, None,
                        length=settings.updates_per_chunk)

  return jax.jit(jax.vmap(chunk, in_axes=(0, None)), donate_argnums=0)


def shard_train_state(states: TrainState, mesh=None) -> TrainState:
  """Places the sessions of [seeds, sessions, ...] train states across local devices.

  Parameters, optimizer state and keys are replicated; the live sessions are
  split on their session axis when it divides by the device count.
  """
  return place_seed_states(states, ("obs", "env_state"), mesh)


def init_train_states(seed: int, num_seeds: int, settings: GFNTrainSettings,
                      env_params: EnvParams) -> TrainState:
  """Train states of seeds seed .. seed + num_seeds - 1 (leading seed axis)."""
  keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_seeds)])
  return jax.jit(jax.vmap(lambda k: init_train_state(k, settings, env_params)))(keys)

"""DAM's training (PPO on the 16-way masked joint action) in the shared loop.

BASELINES.md section 2. One update, entirely on the device (PureJaxRL style):
  1. rollout: `rollout_steps` decisions in `num_sessions` sessions (vmapped, sharded
     over local devices on the session axis, auto-reset); the actor samples from its
     masked softmax (force rule included);
  2. the retention-weighted training reward of every step (`training_reward`):
       r = p (alpha q - gamma s) - beta rebuf_s - theta megabits,
     p the chosen slot's conditional retention feature read before the step, q and s
     the env's credited quality and smoothness (Mbps: they use the sampled watch time,
     privileged information, as DAM's environment does), (alpha, beta, gamma, theta) the
     session's weights; with MMGC's weights this is DAM's
     p q/1000 - 1.85 rebuf_ms/1000 - p smooth/1000 - 0.5 * 8 size/1e6;
  3. GAE(gamma, lambda) from the critic (gfnfeeds.training.ppo);
  4. `ppo_epochs` x `ppo_minibatches` Adam steps (actor and critic with their own
     learning rates) on clipped surrogate + value_coef x clipped value loss -
     entropy_coef x masked entropy, fused in nested scans (`ppo.minibatch_epochs`).
`updates_per_chunk` updates are one jitted `lax.scan`; seeds are vmapped. The train
state (parameters, optimizer, live sessions, PRNG key) is the GFlowNet trainer's
`TrainState`, so checkpoints and resume work the same way.

Export directory layout (what `experiments.evaluate --policy=dam --checkpoint=DIR`
reads): controller.json (settings, the env's discrete action set) + params/ (orbax).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gfnfeeds.env.feeds import EnvParams, FeedsEnv
from gfnfeeds.policies.dam import DAMController
from gfnfeeds.training import ppo
from gfnfeeds.training.gfn_trainer import TrainState, shard_train_state
from gfnfeeds.training.export import loop_hooks, read_export, restore_params, write_export
from gfnfeeds.training.loop import Algorithm, TrainingData

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class DAMTrainSettings:
  """Static settings of one DAM training run (hashable)."""

  controller: DAMController
  num_sessions: int = 64
  rollout_steps: int = 64
  gamma: float = 0.95
  gae_lambda: float = 0.95
  clip_eps: float = 0.2
  value_clip_eps: float = 10.0
  value_coef: float = 0.5
  entropy_coef: float = 0.01
  actor_learning_rate: float = 3e-4
  critic_learning_rate: float = 1e-3
  max_grad_norm: float = 1.0
  ppo_epochs: int = 4
  ppo_minibatches: int = 4
  reward_scale: float = 1.0
  lr_decay_updates: int = 0
  lr_final_fraction: float = 0.1
  updates_per_chunk: int = 10

  def __post_init__(self):
    if (self.num_sessions * self.rollout_steps) % self.ppo_minibatches:
      raise ValueError(f"num_sessions * rollout_steps = {self.num_sessions * self.rollout_steps}"
                       f" does not split into {self.ppo_minibatches} minibatches")


def training_reward(weights, retention, quality_kbps, smooth_kbps, rebuf_ms, video_bytes):
  """DAM's retention-weighted step reward (module docstring), for the session's weights.

  Args:
    weights: [..., 4] (alpha, beta, gamma, theta).
    retention: [...] p, the chosen slot's conditional retention before the step.
    quality_kbps, smooth_kbps: the env's credited quality and smoothness terms (kbps).
    rebuf_ms: stall of the step; video_bytes: bytes downloaded by the step.
  """
  alpha, beta, gamma, theta = (weights[..., i] for i in range(4))
  return (retention * (alpha * quality_kbps / 1000.0 - gamma * smooth_kbps / 1000.0)
          - beta * rebuf_ms / 1000.0 - theta * 8.0 * video_bytes / 1e6)


def learning_rate(settings: DAMTrainSettings, base: float):
  """`base`, or a linear decay to `lr_final_fraction * base` over `lr_decay_updates` updates
  (then constant); the schedule counts Adam steps (ppo_epochs x ppo_minibatches per update)."""
  if settings.lr_decay_updates <= 0:
    return base
  steps = settings.lr_decay_updates * settings.ppo_epochs * settings.ppo_minibatches
  return optax.linear_schedule(base, base * settings.lr_final_fraction, steps)


def make_optimizer(settings: DAMTrainSettings) -> optax.GradientTransformation:
  """Adam with the actor's and the critic's learning rates, after global-norm clipping."""
  labels = lambda p: {"params": {k: k for k in p["params"]}}  # noqa: E731
  return optax.chain(
      optax.clip_by_global_norm(settings.max_grad_norm),
      optax.multi_transform(
          {"actor": optax.adam(learning_rate(settings, settings.actor_learning_rate)),
           "critic": optax.adam(learning_rate(settings, settings.critic_learning_rate))}, labels))


def init_train_state(key: jax.Array, settings: DAMTrainSettings,
                     env_params: EnvParams) -> TrainState:
  ctrl = settings.controller
  k_init, k_reset, k_run = jax.random.split(key, 3)
  params = ctrl.init_params(k_init)
  opt_state = make_optimizer(settings).init(params)
  obs, env_state = jax.vmap(ctrl.env.reset, in_axes=(0, None))(
      jax.random.split(k_reset, settings.num_sessions), env_params)
  return TrainState(params=params, opt_state=opt_state, obs=obs, env_state=env_state,
                    key=k_run, step=jnp.zeros((), jnp.int32))


def init_train_states(seed: int, num_seeds: int, settings: DAMTrainSettings,
                      env_params: EnvParams) -> TrainState:
  """Train states of seeds seed .. seed + num_seeds - 1 (leading seed axis)."""
  keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_seeds)])
  return jax.jit(jax.vmap(lambda k: init_train_state(k, settings, env_params)))(keys)


def make_rollout(settings: DAMTrainSettings):
  """`rollout(params, obs, env_state, key, env_params) -> (obs, env_state, batch, stats)`.

  batch holds [T, N] arrays: features, mask, action, log_prob, value, reward (the
  training reward, scaled), done; plus last_value [N].
  """
  ctrl = dataclasses.replace(settings.controller, greedy=False)
  env = ctrl.env
  n = settings.num_sessions

  def rollout(params, obs, env_state, key, env_params):
    catalog = env_params.catalog

    def one_step(carry, k):
      obs, env_state = carry
      keys = jax.random.split(k, 2 * n).reshape(2, n, -1)
      index, logits, value, features, mask = jax.vmap(
          ctrl.choose, in_axes=(0, None, 0, None))(keys[0], params, obs, catalog)
      log_prob = ppo.categorical_log_prob(logits, index)
      w = env.window
      slot = jnp.minimum(index // env.num_levels_hint, w - 1)
      retention = jnp.take_along_axis(features[:, env.history_len + w:env.history_len + 2 * w],
                                      slot[:, None], axis=1)[:, 0]
      weights = obs.weights
      obs, env_state, reward, term, trunc, info = env.step_batch(keys[1], env_state, index,
                                                                 env_params)
      train_r = training_reward(weights, retention.astype(jnp.float64), info["quality_kbps"],
                                info["smooth_kbps"], info["rebuf_ms"], info["video_bytes"])
      done = term | trunc
      step = dict(features=features, mask=mask, action=index, log_prob=log_prob, value=value,
                  reward=(train_r * settings.reward_scale).astype(F32), done=done)
      stats = dict(env_reward=jnp.mean(reward), train_reward=jnp.mean(train_r),
                   ended=jnp.sum(done),
                   ended_score=jnp.sum(jnp.where(done, info["metrics"]["score"], 0.0)),
                   sleep_frac=jnp.mean(index >= w * env.num_levels_hint))
      return (obs, env_state), (step, stats)

    (obs, env_state), (batch, stats) = jax.lax.scan(one_step, (obs, env_state),
                                                    jax.random.split(key, settings.rollout_steps))
    features = jax.vmap(ctrl.features, in_axes=(0, None))(obs, catalog)
    batch["last_value"] = ctrl.model.apply(params, features)[1]
    return obs, env_state, batch, stats

  return rollout


def make_update(settings: DAMTrainSettings):
  """`update(train_state, env_params) -> (train_state, metrics)`: one rollout + PPO epochs."""
  ctrl = settings.controller
  optimizer = make_optimizer(settings)
  rollout = make_rollout(settings)

  def loss_fn(params, mb):
    logits, values = ctrl.logits_and_value(params, mb["features"], mb["mask"])
    log_prob = ppo.categorical_log_prob(logits, mb["action"])
    policy_loss = ppo.clipped_surrogate_loss(log_prob, mb["log_prob"], mb["advantage"],
                                             settings.clip_eps)
    value_loss = ppo.clipped_value_loss(values, mb["value"], mb["return"],
                                        settings.value_clip_eps)
    entropy = jnp.mean(ppo.categorical_entropy(logits, mb["mask"]))
    loss = policy_loss + settings.value_coef * value_loss - settings.entropy_coef * entropy
    approx_kl = jnp.mean(mb["log_prob"] - log_prob)
    return loss, dict(policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                      approx_kl=approx_kl)

  def update(state: TrainState, env_params: EnvParams):
    key, k_roll, k_ppo = jax.random.split(state.key, 3)
    obs, env_state, batch, stats = rollout(state.params, state.obs, state.env_state, k_roll,
                                           env_params)
    adv, ret = ppo.generalized_advantages(batch["reward"], batch["value"], batch["done"],
                                          batch["last_value"], settings.gamma,
                                          settings.gae_lambda)
    data = dict(features=batch["features"], mask=batch["mask"], action=batch["action"],
                log_prob=batch["log_prob"], value=batch["value"], advantage=adv, **{"return": ret})
    data = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), data)
    params, opt_state, diag = ppo.minibatch_epochs(state.params, state.opt_state, data, k_ppo,
                                                   loss_fn, optimizer, settings.ppo_epochs,
                                                   settings.ppo_minibatches)
    ended = stats["ended"].sum()
    metrics = dict(diag, env_reward=jnp.mean(stats["env_reward"]),
                   train_reward=jnp.mean(stats["train_reward"]), sessions_ended=ended,
                   ended_score=stats["ended_score"].sum() / jnp.maximum(ended, 1),
                   sleep_frac=jnp.mean(stats["sleep_frac"]))
    metrics = jax.tree.map(lambda m: jnp.asarray(m, F32), metrics)
    new = TrainState(params=params, opt_state=opt_state, obs=obs, env_state=env_state, key=key,
                     step=state.step + 1)
    return new, metrics

  return update


def make_train_chunk(settings: DAMTrainSettings, num_seeds: int = 1):
  """`chunk(train_states, env_params) -> (train_states, metrics [seeds, updates])`, jitted."""
  update = make_update(settings)

  def chunk(state, env_params):
    return jax.lax.scan(lambda s, _: update(s, env_params), state, None,
                        length=settings.updates_per_chunk)

  return jax.jit(jax.vmap(chunk, in_axes=(0, None)), donate_argnums=0)


# ----------------------------------------------------------------- config -> objects
def controller_from_config(config: ml_collections.ConfigDict, env: FeedsEnv) -> DAMController:
  d = config.dam
  return DAMController(env=env, actor_hidden=tuple(int(h) for h in d.actor_hidden),
                       actor_activations=tuple(d.actor_activations),
                       critic_hidden=tuple(int(h) for h in d.critic_hidden),
                       critic_activations=tuple(d.critic_activations),
                       force_buffer_ms=float(d.force_buffer_ms), greedy=True)


def settings_from_config(config: ml_collections.ConfigDict, env: FeedsEnv) -> DAMTrainSettings:
  d, t = config.dam, config.train
  return DAMTrainSettings(
      controller=controller_from_config(config, env), num_sessions=int(t.num_sessions),
      rollout_steps=int(t.rollout_steps), gamma=float(d.gamma), gae_lambda=float(d.gae_lambda),
      clip_eps=float(d.clip_eps), value_clip_eps=float(d.value_clip_eps),
      value_coef=float(d.value_coef), entropy_coef=float(d.entropy_coef),
      actor_learning_rate=float(d.actor_learning_rate),
      critic_learning_rate=float(d.critic_learning_rate),
      max_grad_norm=float(t.max_grad_norm), ppo_epochs=int(d.ppo_epochs),
      ppo_minibatches=int(d.ppo_minibatches), reward_scale=float(d.reward_scale),
      lr_decay_updates=int(d.lr_decay_updates), lr_final_fraction=float(d.lr_final_fraction),
      updates_per_chunk=int(t.updates_per_chunk))


def make(config: ml_collections.ConfigDict, data: TrainingData) -> Algorithm:
  settings = settings_from_config(config, data.env)
  num_seeds = int(config.num_seeds)
  chunk = make_train_chunk(settings, num_seeds)
  serving = settings.controller

  def init_states():
    return shard_train_state(init_train_states(int(config.seed), num_seeds, settings,
                                               data.params))

  evaluate, export = loop_hooks(config, serving, save_controller)

  return Algorithm(init_states=init_states, train_chunk=chunk, evaluate=evaluate, export=export,
                   updates_per_chunk=settings.updates_per_chunk, place=shard_train_state)


# ----------------------------------------------------------------- export
def save_controller(directory: str, controller: DAMController, params) -> None:
  """Writes a trained controller (settings + parameters) to `directory`."""
  write_export(directory, "dam", controller.env, {
      "actor_hidden": list(controller.actor_hidden),
      "actor_activations": list(controller.actor_activations),
      "critic_hidden": list(controller.critic_hidden),
      "critic_activations": list(controller.critic_activations),
      "force_buffer_ms": controller.force_buffer_ms}, params)


def load_controller(directory: str, env: FeedsEnv) -> tuple[DAMController, object]:
  """(controller, params) from an export directory or a training workdir (its export/).

  Raises:
    ValueError: no export there, one of another algorithm, or one made for another
      discrete action set / feature size.
  """
  directory, spec = read_export(directory, "dam", env)
  controller = DAMController(env=env, actor_hidden=tuple(spec["actor_hidden"]),
                             actor_activations=tuple(spec["actor_activations"]),
                             critic_hidden=tuple(spec["critic_hidden"]),
                             critic_activations=tuple(spec["critic_activations"]),
                             force_buffer_ms=float(spec["force_buffer_ms"]), greedy=True)
  return controller, restore_params(directory, controller.init_params(jax.random.PRNGKey(0)))

"""Incendio's training (imitation of an oracle-throughput PDAS, then MAPPO) in the shared loop.

BASELINES.md section 4. One run holds both stages: updates 0 .. imitation_updates - 1
are imitation, the rest MAPPO; a chunk is one of the two jitted programs, chosen on
the host from the train state's update counter, so a run resumes at any point (the
train state holds the parameters, both optimizers, the replay buffer, the live
sessions, the policy states, the entropy schedule and the PRNG key).

Stage 1, imitation (PureJaxRL style, one fused update):
  1. `rollout_steps` decisions in `num_sessions` sessions. Each decision is labelled
     by the expert: PDAS (`rules.Pdas`, its max-buffer rule and multi-video MPC)
     fed the *true* future throughput instead of its RobustMPC estimate
     (`oracle_bandwidth`: what the trace would actually deliver for the next
     `oracle_chunks` chunk downloads from the session's trace cursor, RTT included),
     sleeping Incendio's 200 ms when no video qualifies. The expert's (video, level)
     becomes the BM label (slot, or W for the sleep) and the BA label (level).
     The executed action is the expert's, or with probability
     `learner_action_prob` the learner's own sample (DAgger-style mixing, so the
     data also covers states the learner drives itself into).
  2. the labelled decisions enter a ring replay buffer (`replay_capacity`);
  3. `il_steps` Adam steps on minibatches drawn uniformly from the buffer,
     loss = cross-entropy of the BM label + cross-entropy of the BA label (BA only
     where the label is a download).
  Only the expert reads the World (through the env state's trace cursor and the
  World's trace arrays); the Incendio policy gets the Observation and Catalog only.

Stage 2, MAPPO (CTDE, one fused update):
  1. rollout with both actors sampling; the training reward of the paper's eq. (6),
       r = w_n l_n (alpha R_n - gamma S_n) - beta T_n - theta bw_n,
     where w_n R_n and w_n S_n are the env's credited quality and smoothness (a
     chunk counts iff the user watches it: the privileged w_n, used only in the
     reward), l_n the conditional retention feature of the fetched chunk, T_n the
     stall (s), bw_n the megabits; (alpha, beta, gamma, theta) the session's weights;
  2. GAE(gamma, lambda) from the shared critic;
  3. `ppo_epochs` x `ppo_minibatches` steps of: per-agent clipped surrogates (the BA
     agent's only on download decisions) - entropy_coef x entropies + the clipped
     value loss. The first `critic_warmup` updates train the critic head only.
  The entropy coefficient drops by `entropy_step` (floor `entropy_floor`) when the
  training reward (an EMA over updates) has not improved for `entropy_patience`
  updates.

Export directory layout (what `experiments.evaluate --policy=incendio --checkpoint=DIR`
reads): controller.json (settings, the env's window/levels/videos) + params/ (orbax).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from gfnfeeds.env.environment import tree_select
from gfnfeeds.env.feeds import EnvParams, EnvState, FeedsEnv, Observation, transmit
from gfnfeeds.env.rollout import place_seed_states
from gfnfeeds.policies import incendio as inc
from gfnfeeds.policies.rules import Pdas
from gfnfeeds.training import ppo
from gfnfeeds.training.export import loop_hooks, read_export, restore_params, write_export
from gfnfeeds.training.loop import Algorithm, TrainingData

F32 = jnp.float32
REWARDS = ("incendio", "env")


# ----------------------------------------------------------------- the expert (training only)
def oracle_bandwidth(env_state: EnvState, env_params: EnvParams, obs: Observation,
                     horizon_chunks: int) -> jax.Array:
  """The throughput (MB/s, RTT included as the PDAS estimator's samples) the trace will
  actually deliver for the next `horizon_chunks` downloads from the session's cursor.

  The downloads are sized as the mean next-chunk size (mean over levels) of the window's
  slots with chunks left. Reads the World: only the imitation expert may call it.
  """
  sizes = jnp.mean(obs.next_chunk_bytes, axis=-1)
  has = obs.next_chunk_bytes[:, 0] > 0
  mean_size = jnp.sum(jnp.where(has, sizes, 0.0)) / jnp.maximum(jnp.sum(has), 1)
  mean_size = jnp.where(jnp.any(has), mean_size, 1e5)
  total = horizon_chunks * mean_size
  s = env_state.session
  elapsed, _, _ = transmit(env_params.world, s.trace_index, env_state.ptr, env_state.last_t,
                           total, env_params.payload_portion)
  seconds = elapsed + horizon_chunks * env_params.rtt_ms / 1000.0
  return total / 1e6 / jnp.maximum(seconds, 1e-6)


def expert_labels(expert: Pdas, obs: Observation, catalog, bandwidth, window: int):
  """(BM label, BA label) of PDAS's decision at bandwidth `bandwidth` (MB/s).

  BM label: the slot PDAS downloads from, or `window` when no slot is a candidate
  (PDAS sleeps). BA label: PDAS's level (0 with a sleep).
  """
  weights = expert.objective_weights(obs)
  candidate = expert.candidates(obs, catalog, bandwidth)
  levels, utility = jax.vmap(
      lambda s: expert.candidate_utility(obs, catalog, bandwidth, s, weights))(
          jnp.arange(window, dtype=jnp.int32))
  utility = jnp.where(candidate, utility, -jnp.inf)
  slot = jnp.argmax(utility).astype(jnp.int32)
  any_ = jnp.any(candidate)
  return jnp.where(any_, slot, window).astype(jnp.int32), jnp.where(any_, levels[slot],
                                                                    0).astype(jnp.int32)


# ----------------------------------------------------------------- settings and state
@dataclasses.dataclass(frozen=True)
class IncendioTrainSettings:
  """Static settings of one run (hashable). See BUILD_NOTES section 8 for the choices."""

  policy: inc.Incendio
  expert: Pdas
  oracle_chunks: int = 5
  num_sessions: int = 32
  rollout_steps: int = 32
  imitation_updates: int = 200
  il_learning_rate: float = 1e-3
  il_batch: int = 128
  il_steps: int = 8
  replay_capacity: int = 8192
  learner_action_prob: float = 0.25
  learning_rate: float = 1e-4
  adam_eps: float = 1e-5
  max_grad_norm: float = 10.0
  clip_eps: float = 0.2
  gamma: float = 0.99
  gae_lambda: float = 0.95
  ppo_epochs: int = 2
  ppo_minibatches: int = 4
  value_coef: float = 0.5
  entropy_coef: float = 0.03
  entropy_step: float = 0.01
  entropy_floor: float = 0.01
  entropy_patience: int = 100
  reward_ema: float = 0.9
  critic_warmup: int = 10
  reward: str = "incendio"
  updates_per_chunk: int = 10

  def __post_init__(self):
    if self.reward not in REWARDS:
      raise ValueError(f"incendio.reward must be one of {REWARDS}, got {self.reward!r}")
    if self.imitation_updates % self.updates_per_chunk:
      raise ValueError(f"imitation_updates={self.imitation_updates} must be a multiple of "
                       f"updates_per_chunk={self.updates_per_chunk} (a chunk is one stage)")
    if (self.num_sessions * self.rollout_steps) % self.ppo_minibatches:
      raise ValueError("num_sessions * rollout_steps must divide by ppo_minibatches")


@struct.dataclass
class Replay:
  """Ring buffer of labelled decisions (capacity N)."""

  tput: jax.Array      # [N, K]
  grid: jax.Array      # [N, 7, W]
  bm_mask: jax.Array   # [N, W + 1]
  bm_label: jax.Array  # [N]
  ba_label: jax.Array  # [N]
  count: jax.Array     # decisions inserted so far


@struct.dataclass
class TrainState:
  """Everything a resumed run needs (one orbax checkpoint)."""

  params: Any
  il_opt: Any
  ppo_opt: Any
  replay: Replay
  obs: Any          # [B] Observation
  env_state: Any    # [B] EnvState
  pstate: Any       # [B] IncendioState
  key: jax.Array
  step: jax.Array
  entropy_coef: jax.Array
  reward_ema: jax.Array
  best_reward: jax.Array
  since_best: jax.Array


def il_optimizer(s: IncendioTrainSettings):
  return optax.chain(optax.clip_by_global_norm(s.max_grad_norm), optax.adam(s.il_learning_rate))


def ppo_optimizer(s: IncendioTrainSettings):
  return optax.chain(optax.clip_by_global_norm(s.max_grad_norm),
                     optax.adam(s.learning_rate, eps=s.adam_eps))


def init_train_state(key: jax.Array, s: IncendioTrainSettings, env_params: EnvParams) -> TrainState:
  pol = s.policy
  env = pol.env
  k_init, k_reset, k_run = jax.random.split(key, 3)
  params = pol.init_params(k_init)
  obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
      jax.random.split(k_reset, s.num_sessions), env_params)
  pstate = jax.vmap(pol.init, in_axes=(0, None))(obs, env_params.catalog)
  n, w = s.replay_capacity, env.window
  replay = Replay(tput=jnp.zeros((n, inc.HISTORY), F32), grid=jnp.zeros((n, inc.BA_ROWS, w), F32),
                  bm_mask=jnp.zeros((n, w + 1), bool), bm_label=jnp.zeros((n,), jnp.int32),
                  ba_label=jnp.zeros((n,), jnp.int32), count=jnp.zeros((), jnp.int32))
  return TrainState(params=params, il_opt=il_optimizer(s).init(params),
                    ppo_opt=ppo_optimizer(s).init(params), replay=replay, obs=obs,
                    env_state=env_state, pstate=pstate, key=k_run,
                    step=jnp.zeros((), jnp.int32), entropy_coef=jnp.asarray(s.entropy_coef, F32),
                    reward_ema=jnp.zeros((), F32), best_reward=jnp.asarray(-jnp.inf, F32),
                    since_best=jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------- losses
def _slot_logits(ba_logits, bm):
  w = ba_logits.shape[-2]
  return jnp.take_along_axis(ba_logits, jnp.minimum(bm, w - 1)[..., None, None], axis=-2)[..., 0, :]


def imitation_loss(net: inc.IncendioNet, params, batch):
  """Cross-entropy of the expert's labels; (loss, metrics incl. accuracies)."""
  feats = inc.Features(tput=batch["tput"], grid=batch["grid"], bm_mask=batch["bm_mask"])
  bm_logits, ba_logits, _ = inc.distributions(net, params, feats)
  w = ba_logits.shape[-2]
  bm, ba = batch["bm_label"], batch["ba_label"]
  download = bm < w
  bm_nll = -ppo.categorical_log_prob(bm_logits, bm)
  ba_nll = -ppo.categorical_log_prob(_slot_logits(ba_logits, bm), ba)
  n_dl = jnp.maximum(jnp.sum(download), 1)
  bm_loss = jnp.mean(bm_nll)
  ba_loss = jnp.sum(jnp.where(download, ba_nll, 0.0)) / n_dl
  return bm_loss + ba_loss, {"bm_loss": bm_loss, "ba_loss": ba_loss}


def label_accuracy(bm_logits, ba_logits, bm_label, ba_label) -> dict:
  """Greedy agreement with labels: BM, BA (on download labels), and both."""
  w = ba_logits.shape[-2]
  bm_pred = jnp.argmax(bm_logits, -1)
  ba_pred = jnp.argmax(_slot_logits(ba_logits, bm_label), -1)
  download = bm_label < w
  bm_ok = bm_pred == bm_label
  ba_ok = ba_pred == ba_label
  joint = bm_ok & (~download | ba_ok)
  return {"bm_accuracy": jnp.mean(bm_ok),
          "ba_accuracy": jnp.sum(ba_ok & download) / jnp.maximum(jnp.sum(download), 1),
          "accuracy": jnp.mean(joint)}


def mappo_loss(s: IncendioTrainSettings, params, batch, entropy_coef, actor_on):
  """Per-agent clipped surrogates + entropy bonus + clipped value loss."""
  # During the critic warm-up (actor_on = 0) only the critic head receives gradients.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x if any(getattr(k, "key", None) == "critic" for k in path)
      else jax.lax.stop_gradient(x) + actor_on * (x - jax.lax.stop_gradient(x)), params)
  net = s.policy.net
  feats = inc.Features(tput=batch["tput"], grid=batch["grid"], bm_mask=batch["bm_mask"])
  bm_logits, ba_logits, value = inc.distributions(net, params, feats)
  w = ba_logits.shape[-2]
  bm, ba = batch["bm"], batch["ba"]
  download = bm < w
  slot_logits = _slot_logits(ba_logits, bm)
  bm_lp = ppo.categorical_log_prob(bm_logits, bm)
  ba_lp = jnp.where(download, ppo.categorical_log_prob(slot_logits, ba), 0.0)
  adv = batch["advantages"]
  bm_loss = ppo.clipped_surrogate_loss(bm_lp, batch["bm_log_prob"], adv, s.clip_eps)
  ba_loss = ppo.clipped_surrogate_loss(ba_lp, batch["ba_log_prob"], adv, s.clip_eps)
  bm_ent = jnp.mean(ppo.categorical_entropy(bm_logits, feats.bm_mask))
  ba_ent = (jnp.sum(jnp.where(download, ppo.categorical_entropy(slot_logits), 0.0))
            / jnp.maximum(jnp.sum(download), 1))
  v_loss = ppo.clipped_value_loss(value, batch["values"], batch["returns"], s.clip_eps)
  loss = actor_on * (bm_loss + ba_loss - entropy_coef * (bm_ent + ba_ent)) + s.value_coef * v_loss
  return loss, {"bm_loss": bm_loss, "ba_loss": ba_loss, "value_loss": v_loss,
                "bm_entropy": bm_ent, "ba_entropy": ba_ent}


# ----------------------------------------------------------------- rollouts
def _training_reward(s: IncendioTrainSettings, env_reward, info, weights, l_n):
  if s.reward == "env":
    return env_reward
  alpha, beta, gamma, theta = weights[..., 0], weights[..., 1], weights[..., 2], weights[..., 3]
  return (l_n * (alpha * info["quality"] - gamma * info["smoothness"]) - beta * info["rebuffer_s"]
          - theta * info["megabits"])


def make_rollout(s: IncendioTrainSettings, imitation: bool):
  """`rollout(params, state, key, env_params) -> (obs, env_state, pstate, data [T, B], stats)`."""
  pol = s.policy
  env = pol.env
  net = pol.net
  w = env.window

  def one_session(key, params, obs, env_state, pstate, env_params):
    catalog = env_params.catalog
    k_act, k_mix, k_step = jax.random.split(key, 3)
    pstate, feats = pol.prepare(pstate, obs, catalog)
    bm_logits, ba_logits, value = inc.distributions(net, params, feats)
    choice = inc.choose(k_act, bm_logits, ba_logits, value, greedy=False)
    out = {"tput": feats.tput, "grid": feats.grid, "bm_mask": feats.bm_mask}
    if imitation:
      bw = oracle_bandwidth(env_state, env_params, obs, s.oracle_chunks)
      bm_label, ba_label = expert_labels(s.expert, obs, catalog, bw, w)
      learner = jax.random.uniform(k_mix) < s.learner_action_prob
      bm = jnp.where(learner, choice.bm, bm_label)
      ba = jnp.where(learner, choice.ba, ba_label)
      out.update(bm_label=bm_label, ba_label=ba_label,
                 **label_accuracy(bm_logits, ba_logits, bm_label, ba_label))
    else:
      bm, ba = choice.bm, choice.ba
      out.update(bm=bm, ba=ba, bm_log_prob=choice.bm_log_prob, ba_log_prob=choice.ba_log_prob,
                 values=value)
    action = inc.to_action(bm, ba, w, pol.sleep_ms)
    l_n = jnp.where(bm < w, feats.grid[1, jnp.minimum(bm, w - 1)], 0.0)
    weights = env_state.session.weights
    obs_n, env_state_n, reward, term, trunc, info = env.step(k_step, env_state, action, env_params)
    done = term | trunc
    pstate_n = pol.advance(pstate, obs, bm, ba)
    pstate_n = tree_select(done, pol.init(obs_n, catalog), pstate_n)
    out.update(reward=_training_reward(s, reward, info, weights, l_n).astype(F32),
               env_reward=reward.astype(F32), done=done,
               ended_score=jnp.where(done, info["metrics"]["score"], 0.0).astype(F32),
               sleep=(bm == w))
    return obs_n, env_state_n, pstate_n, out

  step_all = jax.vmap(one_session, in_axes=(0, None, 0, 0, 0, None))

  def rollout(params, obs, env_state, pstate, key, env_params):
    def body(carry, k):
      obs, env_state, pstate = carry
      obs, env_state, pstate, out = step_all(jax.random.split(k, s.num_sessions), params, obs,
                                             env_state, pstate, env_params)
      return (obs, env_state, pstate), out

    (obs, env_state, pstate), data = jax.lax.scan(body, (obs, env_state, pstate),
                                                  jax.random.split(key, s.rollout_steps))
    return obs, env_state, pstate, data

  return rollout


def _rollout_stats(data) -> dict:
  ended = jnp.sum(data["done"])
  return {"reward": jnp.mean(data["reward"]), "env_reward": jnp.mean(data["env_reward"]),
          "sessions_ended": ended,
          "ended_score": jnp.sum(data["ended_score"]) / jnp.maximum(ended, 1),
          "sleep_fraction": jnp.mean(data["sleep"])}


def _flat(x):
  return x.reshape((-1,) + x.shape[2:])


# ----------------------------------------------------------------- updates
def make_imitation_update(s: IncendioTrainSettings):
  rollout = make_rollout(s, imitation=True)
  optimizer = il_optimizer(s)
  net = s.policy.net

  def update(state: TrainState, env_params: EnvParams):
    key, k_roll, k_fit = jax.random.split(state.key, 3)
    obs, env_state, pstate, data = rollout(state.params, state.obs, state.env_state, state.pstate,
                                           k_roll, env_params)
    # Insert the labelled decisions into the ring buffer.
    r = state.replay
    n_new = s.num_sessions * s.rollout_steps
    idx = (r.count + jnp.arange(n_new)) % s.replay_capacity
    replay = Replay(tput=r.tput.at[idx].set(_flat(data["tput"])),
                    grid=r.grid.at[idx].set(_flat(data["grid"])),
                    bm_mask=r.bm_mask.at[idx].set(_flat(data["bm_mask"])),
                    bm_label=r.bm_label.at[idx].set(_flat(data["bm_label"])),
                    ba_label=r.ba_label.at[idx].set(_flat(data["ba_label"])),
                    count=r.count + n_new)
    filled = jnp.minimum(replay.count, s.replay_capacity)

    def fit(carry, k):
      params, opt = carry
      pick = jax.random.randint(k, (s.il_batch,), 0, filled)
      batch = {"tput": replay.tput[pick], "grid": replay.grid[pick],
               "bm_mask": replay.bm_mask[pick], "bm_label": replay.bm_label[pick],
               "ba_label": replay.ba_label[pick]}
      (loss, aux), grads = jax.value_and_grad(
          lambda p: imitation_loss(net, p, batch), has_aux=True)(params)
      updates, opt = optimizer.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), dict(aux, loss=loss)

    (params, il_opt), fit_metrics = jax.lax.scan(fit, (state.params, state.il_opt),
                                                 jax.random.split(k_fit, s.il_steps))
    metrics = dict(_rollout_stats(data), **jax.tree.map(jnp.mean, fit_metrics),
                   bm_accuracy=jnp.mean(data["bm_accuracy"]),
                   ba_accuracy=jnp.mean(data["ba_accuracy"]), accuracy=jnp.mean(data["accuracy"]),
                   stage=jnp.zeros(()))
    new = state.replace(params=params, il_opt=il_opt, replay=replay, obs=obs,
                        env_state=env_state, pstate=pstate, key=key, step=state.step + 1)
    return new, jax.tree.map(lambda m: jnp.asarray(m, F32), metrics)

  return update


def make_mappo_update(s: IncendioTrainSettings):
  rollout = make_rollout(s, imitation=False)
  optimizer = ppo_optimizer(s)
  pol = s.policy
  net = pol.net

  def update(state: TrainState, env_params: EnvParams):
    key, k_roll, k_fit = jax.random.split(state.key, 3)
    obs, env_state, pstate, data = rollout(state.params, state.obs, state.env_state, state.pstate,
                                           k_roll, env_params)
    # Bootstrap value of the states the rollout stopped in.
    _, last_feats = jax.vmap(pol.prepare, in_axes=(0, 0, None))(pstate, obs, env_params.catalog)
    _, _, last_value = inc.distributions(net, state.params, last_feats)
    adv, returns = ppo.generalized_advantages(data["reward"], data["values"], data["done"],
                                              last_value, s.gamma, s.gae_lambda)
    batch = {k: _flat(data[k]) for k in ("tput", "grid", "bm_mask", "bm", "ba", "bm_log_prob",
                                         "ba_log_prob", "values")}
    batch.update(advantages=_flat(adv), returns=_flat(returns))
    ppo_step = state.step - s.imitation_updates
    actor_on = (ppo_step >= s.critic_warmup).astype(F32)
    params, ppo_opt, fit = ppo.minibatch_epochs(
        state.params, state.ppo_opt, batch, k_fit,
        lambda p, mb: mappo_loss(s, p, mb, state.entropy_coef, actor_on), optimizer,
        s.ppo_epochs, s.ppo_minibatches)
    # Entropy schedule: step down after `entropy_patience` updates without a better reward.
    stats = _rollout_stats(data)
    ema = jnp.where(ppo_step == 0, stats["reward"],
                    s.reward_ema * state.reward_ema + (1 - s.reward_ema) * stats["reward"])
    better = ema > state.best_reward
    since = jnp.where(better, 0, state.since_best + 1)
    decay = since >= s.entropy_patience
    entropy_coef = jnp.where(decay, jnp.maximum(state.entropy_coef - s.entropy_step,
                                                s.entropy_floor), state.entropy_coef)
    metrics = dict(stats, **fit, entropy_coef=state.entropy_coef, reward_ema=ema,
                   stage=jnp.ones(()))
    new = state.replace(params=params, ppo_opt=ppo_opt, obs=obs, env_state=env_state,
                        pstate=pstate, key=key, step=state.step + 1,
                        entropy_coef=entropy_coef.astype(F32), reward_ema=ema.astype(F32),
                        best_reward=jnp.maximum(state.best_reward, ema).astype(F32),
                        since_best=jnp.where(decay, 0, since).astype(jnp.int32))
    return new, jax.tree.map(lambda m: jnp.asarray(m, F32), metrics)

  return update


def make_train_chunk(s: IncendioTrainSettings, num_seeds: int = 1):
  """`chunk(states, env_params) -> (states, metrics [seeds, updates])`.

  Two jitted programs (`updates_per_chunk` fused imitation or MAPPO updates, seeds
  vmapped); the host picks by the update counter, so a chunk never mixes stages.
  """
  def fused(update):
    def chunk(state, env_params):
      return jax.lax.scan(lambda st, _: update(st, env_params), state, None,
                          length=s.updates_per_chunk)
    return jax.jit(jax.vmap(chunk, in_axes=(0, None)), donate_argnums=0)

  il_chunk = fused(make_imitation_update(s))
  rl_chunk = fused(make_mappo_update(s))

  def chunk(states, env_params):
    step = int(np.asarray(jax.device_get(states.step)).reshape(-1)[0])
    return (il_chunk if step < s.imitation_updates else rl_chunk)(states, env_params)

  chunk.imitation = il_chunk
  chunk.mappo = rl_chunk
  return chunk


def init_train_states(seed: int, num_seeds: int, s: IncendioTrainSettings,
                      env_params: EnvParams) -> TrainState:
  keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(num_seeds)])
  return jax.jit(jax.vmap(lambda k: init_train_state(k, s, env_params)))(keys)


def shard_train_state(states: TrainState, mesh=None) -> TrainState:
  """Sessions ([seeds, sessions, ...]: obs, env_state, pstate) split over local devices."""
  return place_seed_states(states, ("obs", "env_state", "pstate"), mesh)


# ----------------------------------------------------------------- the shared loop's interface
def settings_from_config(config: ml_collections.ConfigDict, env: FeedsEnv) -> IncendioTrainSettings:
  c, t = config.incendio, config.train
  policy = inc.Incendio(env=env, sleep_ms=int(c.sleep_ms), greedy=False)
  expert = Pdas(sleep_ms=int(c.sleep_ms))
  return IncendioTrainSettings(
      policy=policy, expert=expert, oracle_chunks=int(c.oracle_chunks),
      num_sessions=int(t.num_sessions), rollout_steps=int(t.rollout_steps),
      imitation_updates=int(c.imitation_updates), il_learning_rate=float(c.il_learning_rate),
      il_batch=int(c.il_batch), il_steps=int(c.il_steps),
      replay_capacity=int(c.replay_capacity), learner_action_prob=float(c.learner_action_prob),
      learning_rate=float(t.learning_rate), adam_eps=float(c.adam_eps),
      max_grad_norm=float(t.max_grad_norm), clip_eps=float(c.clip_eps), gamma=float(c.gamma),
      gae_lambda=float(c.gae_lambda), ppo_epochs=int(c.ppo_epochs),
      ppo_minibatches=int(c.ppo_minibatches), value_coef=float(c.value_coef),
      entropy_coef=float(c.entropy_coef), entropy_step=float(c.entropy_step),
      entropy_floor=float(c.entropy_floor), entropy_patience=int(c.entropy_patience),
      critic_warmup=int(c.critic_warmup), reward=str(c.reward),
      updates_per_chunk=int(t.updates_per_chunk))


def make(config: ml_collections.ConfigDict, data: TrainingData) -> Algorithm:
  settings = settings_from_config(config, data.env)
  num_seeds = int(config.num_seeds)
  chunk = make_train_chunk(settings, num_seeds)
  serving = dataclasses.replace(settings.policy, greedy=True)

  def init_states():
    return shard_train_state(init_train_states(int(config.seed), num_seeds, settings,
                                               data.params))

  evaluate, export = loop_hooks(config, serving, save_controller)

  return Algorithm(init_states=init_states, train_chunk=chunk, evaluate=evaluate, export=export,
                   updates_per_chunk=settings.updates_per_chunk, place=shard_train_state)


def save_controller(directory: str, policy: inc.Incendio, params) -> None:
  """Writes a trained Incendio controller (settings + parameters) to `directory`."""
  write_export(directory, "incendio", policy.env, {"sleep_ms": policy.sleep_ms}, params)


def load_controller(directory: str, env: FeedsEnv) -> tuple[inc.Incendio, Any]:
  """(greedy Incendio policy, params) from an export directory or a training workdir.

  Raises:
    ValueError: no export there, one of another algorithm, or one made for another window
      or ladder.
  """
  # The networks depend on the window and the ladder only; the number of videos per session
  # just sizes the per-session memory, built from `env`.
  directory, spec = read_export(directory, "incendio", env, match=("window", "num_levels"))
  policy = inc.Incendio(env=env, sleep_ms=int(spec["sleep_ms"]), greedy=True)
  return policy, restore_params(directory, policy.init_params(jax.random.PRNGKey(0)))

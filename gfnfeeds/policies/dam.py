"""DAM: a PPO actor over the 16-way joint action with action masks (BASELINES.md section 2).

The action set is the environment's discrete one (`FeedsEnv.action_from_index`):
index a < W*L downloads window slot a // L at level a % L (slot 0 = the playing
video), the last index sleeps `env.sleep_choices_ms[0]` (TAU = 500 ms, DAM's
training environment). With MMGC's W = 5, L = 3 and one sleep that is DAM's 16.

State (`dam_features`, float32): DAM's 35-float vector, except that the throughput
history holds the environment's `history_len` samples (8 by default; DAM keeps 10):
  throughputs (Mbps, newest last; 1.0 where no sample yet),
  next-chunk size at the lowest level per slot (MB),
  conditional retention of the next chunk per slot, r(next) / r(play position),
  buffer per slot (s), chunks left per slot / 10, last level per slot (0..L-1).
Empty slots are zero. Nothing here reads the World: only the Observation and Catalog.

Mask (`dam_mask`): the observation's mask (a video's downloads iff it has chunks
left; sleep always), plus DAM's force rule: when the playing video has chunks left
and its buffer is <= `force_buffer_ms`, only the playing video's downloads remain.

Networks (no weight sharing): actor hidden (128 ReLU, 64 Tanh) -> logits, critic
(128 ReLU, 64 ReLU) -> value. Inference takes the argmax of the masked
probabilities (`greedy=True`, DAM's submitted solutions); training samples.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gfnfeeds.data.packing import Catalog
from gfnfeeds.env.feeds import CHUNK_MS, FeedsEnv, Observation
from gfnfeeds.policies.base import Policy
from gfnfeeds.training.ppo import masked_logits

F32 = jnp.float32


def feature_dim(env: FeedsEnv) -> int:
  return env.history_len + 5 * env.window


def slot_retention(obs: Observation, catalog: Catalog) -> jax.Array:
  """float64 [W]: r(next undownloaded chunk) / r(current play chunk) per slot (0 if empty).

  For a queued video the play position is 0 and r(0) = 1, so this is the raw r.
  """
  video = jnp.where(obs.slot_valid, obs.slot_video, 0)
  rows = catalog.retention[video]  # [W, C+1]
  last = rows.shape[-1] - 1
  k_next = jnp.clip(obs.chunks_downloaded, 0, last)
  k_now = jnp.clip(obs.play_ms // CHUNK_MS, 0, last)
  r_next = jnp.take_along_axis(rows, k_next[:, None], axis=1)[:, 0]
  r_now = jnp.take_along_axis(rows, k_now[:, None], axis=1)[:, 0]
  ratio = jnp.where(r_now > 0, r_next / jnp.where(r_now > 0, r_now, 1.0), 0.0)
  return jnp.where(obs.slot_valid, jnp.clip(ratio, 0.0, 1.0), 0.0)


def dam_features(obs: Observation, catalog: Catalog) -> jax.Array:
  """float32 [history_len + 5 W]: DAM's state vector (module docstring)."""
  valid = obs.slot_valid
  tput = jnp.where(obs.tput_history_mbps > 0, obs.tput_history_mbps, 1.0)
  next_mb = obs.next_chunk_bytes[:, 0] / 1e6
  left = jnp.maximum(obs.num_chunks - obs.chunks_downloaded, 0) / 10.0
  per_slot = [next_mb, slot_retention(obs, catalog), obs.buffer_ms / 1000.0, left,
              jnp.maximum(obs.last_level, 0).astype(jnp.float64)]
  per_slot = [jnp.where(valid, x, 0.0) for x in per_slot]
  return jnp.concatenate([tput] + per_slot).astype(F32)


def dam_mask(obs: Observation, num_levels: int, force_buffer_ms: float) -> jax.Array:
  """bool [A]: the observation's action mask with DAM's force rule applied."""
  mask = obs.action_mask
  playing_has_chunks = mask[0]
  force = playing_has_chunks & (obs.buffer_ms[0] <= force_buffer_ms)
  only_playing = jnp.arange(mask.shape[-1]) < num_levels
  return jnp.where(force, mask & only_playing, mask)


class MLP(nn.Module):
  hidden: Sequence[int]
  activations: Sequence[str]
  out: int

  @nn.compact
  def __call__(self, x):
    for width, act in zip(self.hidden, self.activations):
      x = getattr(nn, act)(nn.Dense(width, dtype=F32, param_dtype=F32)(x))
    return nn.Dense(self.out, dtype=F32, param_dtype=F32)(x)


class ActorCritic(nn.Module):
  """Separate actor and critic MLPs: features [..., F] -> (logits [..., A], value [...])."""

  num_actions: int
  actor_hidden: Sequence[int] = (128, 64)
  actor_activations: Sequence[str] = ("relu", "tanh")
  critic_hidden: Sequence[int] = (128, 64)
  critic_activations: Sequence[str] = ("relu", "relu")

  def setup(self):
    self.actor = MLP(self.actor_hidden, self.actor_activations, self.num_actions)
    self.critic = MLP(self.critic_hidden, self.critic_activations, 1)

  def __call__(self, features):
    return self.actor(features), self.critic(features)[..., 0]


@dataclasses.dataclass(frozen=True)
class DAMController(Policy):
  """DAM as a Policy (module docstring). Weights are bound with `bind(params)`.

  Attributes:
    env: the FeedsEnv whose discrete action set the actor outputs.
    actor_hidden, actor_activations, critic_hidden, critic_activations: the MLPs.
    force_buffer_ms: DAM's force rule threshold (1.0 s in the general model).
    greedy: argmax of the masked probabilities (True, inference) or sample them.
    network_params: Flax parameters (not part of the hash).
  """

  env: FeedsEnv = FeedsEnv()
  actor_hidden: tuple[int, ...] = (128, 64)
  actor_activations: tuple[str, ...] = ("relu", "tanh")
  critic_hidden: tuple[int, ...] = (128, 64)
  critic_activations: tuple[str, ...] = ("relu", "relu")
  force_buffer_ms: float = 1000.0
  greedy: bool = True
  network_params: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

  @property
  def model(self) -> ActorCritic:
    return ActorCritic(num_actions=self.env.num_actions, actor_hidden=self.actor_hidden,
                       actor_activations=self.actor_activations,
                       critic_hidden=self.critic_hidden,
                       critic_activations=self.critic_activations)

  @property
  def name(self) -> str:
    return "dam"

  def init_params(self, key: jax.Array):
    return self.model.init(key, jnp.zeros((1, feature_dim(self.env)), F32))

  def bind(self, network_params) -> "DAMController":
    return dataclasses.replace(self, network_params=network_params)

  def features(self, obs: Observation, catalog: Catalog) -> jax.Array:
    return dam_features(obs, catalog)

  def mask(self, obs: Observation) -> jax.Array:
    return dam_mask(obs, self.env.num_levels_hint, self.force_buffer_ms)

  def logits_and_value(self, params, features, mask):
    """(masked logits [..., A], value [...]) for features [..., F] and masks [..., A]."""
    logits, value = self.model.apply(params, features)
    return masked_logits(logits, mask), value

  def choose(self, key: jax.Array, params, obs: Observation, catalog: Catalog):
    """(action index, masked logits, value, features, mask) for one observation."""
    features = self.features(obs, catalog)
    mask = self.mask(obs)
    logits, value = self.logits_and_value(params, features, mask)
    index = jnp.argmax(logits) if self.greedy else jax.random.categorical(key, logits)
    return index.astype(jnp.int32), logits, value, features, mask

  def act(self, key, policy_state, obs, catalog):
    if self.network_params is None:
      raise ValueError("DAMController has no parameters: bind(params) first "
                       "(load_policy('dam', env) loads the committed checkpoint)")
    index = self.choose(key, self.network_params, obs, catalog)[0]
    return self.env.action_from_index(index), policy_state

"""The functional environment base class (gymnax 1.0 style) and spaces.

An Environment owns no data: every method is a pure function of its arguments,
shape-defining settings live on the (hashable) environment object, everything
else in an EnvParams pytree that is passed in, so params can be vmapped or
swapped for another data set of the same shapes without recompiling.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp

State = TypeVar("State")
Params = TypeVar("Params")
Obs = Any
Action = Any


def tree_select(pred: jnp.ndarray, on_true, on_false):
  """Leaf-wise `jnp.where(pred, a, b)` over two pytrees of the same structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class Environment(Generic[State, Params]):
  """Base class: `reset`/`step` with auto-reset around the `reset_env`/`step_env` hooks.

  `step` returns `(obs, state, reward, terminated, truncated, info)`. When the
  session ends (terminated or truncated) the returned obs/state are those of a
  freshly reset session, and `info["final_observation"]` holds the last
  observation of the ended one (as gymnax 1.0 and Gymnasium do).
  """

  # False when step_env ignores its key (deterministic dynamics): step then hands
  # the whole key to the auto-reset and saves a split per step.
  step_uses_key: bool = True

  def default_params(self) -> Params:
    raise NotImplementedError

  def reset(self, key: jax.Array, params: Params) -> tuple[Obs, State]:
    """Starts a new session drawn from `params` with `key`."""
    return self.reset_env(key, params)

  def step(self, key: jax.Array, state: State, action: Action, params: Params):
    """Steps one session; auto-resets it when it ends."""
    if self.step_uses_key:
      key_step, key_reset = jax.random.split(key)
    else:
      key_step = key_reset = key
    obs, state_next, reward, terminated, truncated, info = self.step_env(
        key_step, state, action, params)
    obs_reset, state_reset = self.reset_env(key_reset, params)
    done = jnp.logical_or(terminated, truncated)
    info = dict(info, final_observation=obs)
    state_out = tree_select(done, state_reset, state_next)
    if type(self).get_obs is not Environment.get_obs:
      # Observe the selected state once: the terminal and reset observations are
      # then dead code under jit unless info["final_observation"] is read
      # (22% less CPU per step for FeedsEnv, BUILD_NOTES.md).
      obs_out = self.get_obs(state_out, params)
    else:
      obs_out = tree_select(done, obs_reset, obs)
    return obs_out, state_out, reward, terminated, truncated, info

  def get_obs(self, state: State, params: Params) -> Obs:
    """Optional hook: the observation of a state (lets `step` observe only once)."""
    raise NotImplementedError

  def reset_env(self, key: jax.Array, params: Params) -> tuple[Obs, State]:
    raise NotImplementedError

  def step_env(self, key: jax.Array, state: State, action: Action, params: Params):
    raise NotImplementedError

  def action_space(self, params: Params | None = None):
    raise NotImplementedError

  def observation_space(self, params: Params):
    raise NotImplementedError

  @property
  def name(self) -> str:
    return type(self).__name__


class Discrete:
  """Integers 0..n-1."""

  def __init__(self, n: int):
    self.n = int(n)
    self.shape = ()
    self.dtype = jnp.int32

  def sample(self, key: jax.Array) -> jax.Array:
    return jax.random.randint(key, (), 0, self.n, dtype=self.dtype)

  def contains(self, x) -> jax.Array:
    x = jnp.asarray(x)
    return jnp.logical_and(x >= 0, x < self.n)


class Box:
  """A box [low, high] of a given shape and dtype."""

  def __init__(self, low, high, shape: tuple[int, ...], dtype=jnp.float32):
    self.low, self.high, self.shape, self.dtype = low, high, tuple(shape), dtype

  def sample(self, key: jax.Array) -> jax.Array:
    low = jnp.broadcast_to(jnp.asarray(self.low, jnp.float64), self.shape)
    high = jnp.broadcast_to(jnp.asarray(self.high, jnp.float64), self.shape)
    finite_low = jnp.where(jnp.isfinite(low), low, -1e6)
    finite_high = jnp.where(jnp.isfinite(high), high, 1e6)
    u = jax.random.uniform(key, self.shape, jnp.float64)
    return (finite_low + u * (finite_high - finite_low)).astype(self.dtype)

  def contains(self, x) -> jax.Array:
    x = jnp.asarray(x)
    return jnp.logical_and(jnp.all(x >= self.low), jnp.all(x <= self.high))


class Dict:
  """A dictionary of named spaces."""

  def __init__(self, spaces: dict):
    self.spaces = dict(spaces)

  def sample(self, key: jax.Array) -> dict:
    keys = jax.random.split(key, len(self.spaces))
    return {k: s.sample(kk) for (k, s), kk in zip(self.spaces.items(), keys)}

  def contains(self, x: dict) -> jax.Array:
    ok = jnp.asarray(True)
    for k, s in self.spaces.items():
      ok = jnp.logical_and(ok, s.contains(x[k]))
    return ok

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

from gfnfeeds.numerics import prefix_count

State = TypeVar("State")
Params = TypeVar("Params")
Obs = Any
Action = Any


def tree_select(pred: jnp.ndarray, on_true, on_false):
  """Leaf-wise `jnp.where(pred, a, b)` over two pytrees of the same structure."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def select_rows(mask: jnp.ndarray, on_true, on_false):
  """Row-wise `tree_select` for batched pytrees: row i of every leaf from on_true where mask[i].

  mask is bool [N]; leaves have a leading axis N and any trailing shape.
  """
  def pick(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (jnp.ndim(a) - 1)), a, b)

  return jax.tree.map(pick, on_true, on_false)


def bounded_while(cond, body, init, max_iters: int | None):
  """`lax.while_loop(cond, body, init)`, or at most `max_iters` iterations of it unrolled.

  Returns `(carry, finished)`; the carry equals the while loop's bit for bit
  wherever `finished`. With `max_iters=None` it is the while loop (`finished` is
  True). Otherwise the loop is straight-line code that XLA fuses (each iteration
  applies `body` only where `cond` holds), and `finished` says whether `cond`
  became false within the bound.

  Why: under vmap a while loop runs as many trips as its slowest member. The
  bounded form costs a fixed `max_iters` and leaves the rare slow members to
  `batched_loop`'s exact continuation.
  """
  if max_iters is None:
    return jax.lax.while_loop(cond, body, init), jnp.asarray(True)
  carry = init
  for _ in range(max_iters):
    carry = tree_select(cond(carry), body(carry), carry)
  return carry, jnp.logical_not(cond(carry))


def first_true_rows(mask: jax.Array, k: int) -> jax.Array:
  """int32 [k]: the indices of the first k True entries of bool [N] `mask`, then N (none left).

  `jnp.nonzero(mask, size=k, fill_value=N)`, computed with a log-depth prefix
  count and a binary search: XLA's CPU cumsum (a reduce-window) and nonzero cost
  several times more at the batch sizes of a rollout.
  """
  count = prefix_count(mask)
  return jnp.searchsorted(count, jnp.arange(1, k + 1, dtype=jnp.int32), side="left").astype(
      jnp.int32)


def batched_loop(loop, lanes, carry, bound: int, capacity: int):
  """A per-row loop over a batch: bounded for every row, continued exactly where unfinished.

  `loop(lane, carry, max_iters)` runs one row's loop from `carry` for at most
  `max_iters` iterations (None: to the end) and returns `(carry, finished)`
  (`bounded_while`'s form). The result equals, bit for bit,
  `jax.vmap(lambda l, c: loop(l, c, None)[0])(lanes, carry)`, at the cost of
  `bound` unrolled iterations for all rows plus the exact loop for the rows that
  needed more, a group of `capacity` at a time (`compact_apply`).

  Args:
    loop: the per-row loop (pure; shared data closed over as traced values).
    lanes: per-row inputs, leading axis N.
    carry: per-row loop state, leading axis N.
    bound: iterations every row takes unrolled.
    capacity: rows per group of the exact continuation.
  """
  carry, finished = jax.vmap(lambda l, c: loop(l, c, bound))(lanes, carry)
  return compact_apply(jnp.logical_not(finished), lambda lc: loop(lc[0], lc[1], None)[0],
                       (lanes, carry), carry, capacity)


def compact_apply(mask: jax.Array, fn, inputs, outputs, capacity: int):
  """`outputs` with row i replaced by `fn(inputs[i])` wherever `mask[i]`, computing `fn` on
  the masked rows only.

  Rows are gathered in groups of at most `capacity`, `fn` is vmapped over the group
  and the results are scattered back; a while loop takes groups until no masked
  row is left, so a step where nothing is masked costs one test. The result equals
  `tree_select(mask, jax.vmap(fn)(inputs), outputs)` row for row, bit for bit.
  This is how a batch pays for rare, expensive per-row work (the auto-reset of
  ended sessions, the few slow downloads) at the rate it occurs rather than for
  every row. Also correct under vmap and inside shard_map (per device).

  Args:
    mask: bool [N].
    fn: maps one row of `inputs` to one row of `outputs`.
    inputs, outputs: pytrees whose leaves have a leading axis N.
    capacity: rows per group, 1 <= capacity (clipped to N).
  """
  n = mask.shape[0]
  capacity = max(1, min(int(capacity), n))

  def cond(c):
    return jnp.any(c[0])

  def body(c):
    pending, out = c
    rows = first_true_rows(pending, capacity)
    taken = jax.tree.map(lambda x: x[jnp.minimum(rows, n - 1)], inputs)
    result = jax.vmap(fn)(taken)
    # Fill rows (== n) are out of bounds and dropped by the scatter.
    out = jax.tree.map(lambda o, r: o.at[rows].set(r.astype(o.dtype), mode="drop"), out, result)
    return pending.at[rows].set(False, mode="drop"), out

  return jax.lax.while_loop(cond, body, (mask, outputs))[1]


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

  def step_batch(self, keys, state: State, action: Action, params: Params,
                 reset_capacity: int | None = None, key_fn=None):
    """`jax.vmap(self.step, (0, 0, 0, None))` for a batch of sessions, bit for bit, faster.

    The auto-reset of `step` computes a fresh session for every session at every
    step and keeps it only where one ended; here it is computed for the ended
    sessions only (`compact_apply`, in groups of `reset_capacity`, default
    max(1, N // 64)), and the transition itself is `step_env_batch`, which an
    environment may specialise. Use it wherever a batch of sessions is stepped
    in lockstep (rollouts, training); vmap it again over seeds or shard it over
    devices as usual.

    Args:
      keys: [N] PRNG keys, one per session (as vmap(step) takes them); or, with
        `key_fn`, per-session values (a pytree, leading axis N) that `key_fn`
        turns into the session's key.
      state, action: pytrees with a leading session axis N.
      params: shared by the batch (not batched).
      reset_capacity: sessions reset per group (a tuning knob, never a limit).
      key_fn: when given, the result equals vmap(step) with keys
        `jax.vmap(key_fn)(keys)`, but `key_fn` runs only where a key is used:
        for an environment whose step_env ignores its key (`step_uses_key`
        False), only for the sessions that reset. Saves a PRNG hash per session
        and step (a rollout passes (key, step index) and `jax.random.fold_in`).
    """
    n = jax.tree.leaves(keys)[0].shape[0]
    make_key = (lambda k: k) if key_fn is None else key_fn
    if self.step_uses_key:
      split = jax.vmap(lambda k: jax.random.split(make_key(k)))(keys)
      key_step, key_reset, make_key = split[:, 0], split[:, 1], (lambda k: k)
    else:
      key_step, key_reset = None, keys
    obs, state_next, reward, terminated, truncated, info = self.step_env_batch(
        key_step, state, action, params)
    done = jnp.logical_or(terminated, truncated)
    capacity = max(1, n // 64) if reset_capacity is None else reset_capacity
    info = dict(info, final_observation=obs)
    if type(self).get_obs is not Environment.get_obs:
      state_out = compact_apply(done, lambda k: self.reset_env(make_key(k), params)[1],
                                key_reset, state_next, capacity)
      obs_out = jax.vmap(self.get_obs, in_axes=(0, None))(state_out, params)
    else:
      obs_out, state_out = compact_apply(done, lambda k: self.reset_env(make_key(k), params),
                                         key_reset, (obs, state_next), capacity)
    return obs_out, state_out, reward, terminated, truncated, info

  def step_env_batch(self, keys, state: State, action: Action, params: Params):
    """Hook: `step_env` over a batch (leading axis) with shared params; default vmap.

    `keys` is None when `step_uses_key` is False. Environments override it with
    an equal, cheaper batched transition.
    """
    if keys is None:
      return jax.vmap(lambda s, a: self.step_env(None, s, a, params))(state, action)
    return jax.vmap(self.step_env, in_axes=(0, 0, 0, None))(keys, state, action, params)

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

"""Rollouts of many sessions: scanned over time, vmapped over sessions, sharded over devices."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gfnfeeds.env.environment import select_rows
from gfnfeeds.env.feeds import EnvParams, FeedsEnv, Session, session_metrics

SESSION_AXIS = "sessions"


def session_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all local devices (or `devices`), axis name 'sessions'."""
  devices = jax.local_devices() if devices is None else devices
  return Mesh(np.asarray(devices), (SESSION_AXIS,))


def place_seed_states(states, session_fields: Collection[str], mesh: Mesh | None = None):
  """Places train states with leading [seeds, sessions, ...] axes on the local devices.

  `states` is a dataclass (e.g. a flax struct); its fields named in `session_fields` (the
  live sessions) are split on their session axis (axis 1) where it divides by the device
  count; every other field (parameters, optimizer state, keys, counters) is replicated.
  """
  mesh = session_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  replicated = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P(None, SESSION_AXIS))

  def place(x, shard):
    if shard and x.ndim >= 2 and x.shape[1] % n_dev == 0:
      return jax.device_put(x, split)
    return jax.device_put(x, replicated)

  return states.replace(**{
      f.name: jax.tree.map(lambda x, sh=f.name in session_fields: place(x, sh),
                           getattr(states, f.name))
      for f in dataclasses.fields(states)})


def shard_sessions(fn: Callable, mesh: Mesh, num_sharded_args: int) -> Callable:
  """Runs `fn` on each device's share of the session axis.

  The first `num_sharded_args` arguments (pytrees with a leading session axis)
  are split over the mesh; the remaining arguments (params) are replicated;
  every output keeps a leading session axis. The session count must divide by
  the number of devices.
  """

  def wrapped(*args):
    specs = tuple(P(SESSION_AXIS) if i < num_sharded_args else P() for i in range(len(args)))
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(SESSION_AXIS),
                         check_vma=False)(*args)

  return wrapped


def make_autoreset_rollout(env: FeedsEnv, policy, num_steps: int):
  """Returns `rollout(keys[N], params) -> dict of [N] sums`: `num_steps` steps per session.

  Sessions auto-reset when they end (gymnax semantics) and the policy state is
  re-initialised with them. This is the training/benchmark loop shape: one scan
  over steps of the whole batch, stepped with `env.step_batch` (equal to vmap of
  `env.step`, with the auto-reset computed only for the sessions that ended).
  Session i's trajectory depends on keys[i] only, not on the batch around it.
  """

  if getattr(policy, "clairvoyant", False):
    raise ValueError(f"{policy.name} reads the World and runs only in make_session_evaluator "
                     "(explicit sessions), not in auto-reset rollouts")

  def rollout(keys, params: EnvParams):
    catalog = params.catalog
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    k_reset, k_act, k_env = split[:, 0], split[:, 1], split[:, 2]
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(k_reset, params)
    init = jax.vmap(policy.init, in_axes=(0, None))
    pstate = init(obs, catalog)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))

    def body(carry, t):
      obs, state, pstate = carry
      action, pstate = jax.vmap(policy.act, in_axes=(0, 0, 0, None))(fold(k_act, t), pstate,
                                                                       obs, catalog)
      # The step's key is fold_in(k_env, t), derived only where the env uses it (resets).
      steps = jnp.broadcast_to(t, (k_env.shape[0],))
      obs, state, reward, terminated, truncated, _ = env.step_batch(
          (k_env, steps), state, action, params, key_fn=lambda ks: jax.random.fold_in(*ks))
      done = terminated | truncated
      pstate = select_rows(done, init(obs, catalog), pstate)
      return (obs, state, pstate), (reward, done)

    _, (rewards, dones) = jax.lax.scan(body, (obs, state, pstate),
                                       jnp.arange(num_steps, dtype=jnp.int32))
    return {"reward": rewards.sum(0), "sessions_ended": dones.sum(0)}

  return rollout


def decision_key(session_key: jax.Array, t) -> jax.Array:
  """The key a policy acts with at decision `t` of a session evaluated with `session_key`.

  `make_session_evaluator` uses it, and so does the clairvoyant oracle when it re-runs a base
  policy, so that the oracle reproduces the base policy's evaluated trajectory exactly, a
  stochastic policy (the GFlowNet controller) included.
  """
  return jax.random.split(jax.random.fold_in(session_key, t))[0]


def make_session_evaluator(env: FeedsEnv, policy, max_steps: int | None = None):
  """Returns `evaluate(sessions, keys[N], params, policy_params=()) -> (metrics of [N], steps)`.

  Runs each given Session to its end (no auto-reset): a while loop over decision
  steps that stops when every session has ended or after `max_steps`
  (default env.max_steps); ended sessions are frozen. Use it to compare
  policies on exactly the same sessions.

  A clairvoyant policy (`clairvoyant` marker, gfnfeeds.policies.base.ClairvoyantPolicy:
  the oracle upper bound, the one declared reader of the World) gets the true
  EnvState, the EnvParams and the decision limit: `init_clairvoyant(key, obs, state,
  params, limit)` (`key`: the session's key, see `decision_key`) and
  `act_clairvoyant(key, pstate, obs, state, params, limit)`.
  """
  limit = env.max_steps if max_steps is None else int(max_steps)

  def evaluate(sessions: Session, keys: jax.Array, params: EnvParams, policy_params=()):
    bound = policy.bind(policy_params)
    clairvoyant = getattr(bound, "clairvoyant", False)
    obs, state = jax.vmap(env.reset_to_session, in_axes=(0, None))(sessions, params)
    if clairvoyant:
      pstate = jax.vmap(lambda k, o, s: bound.init_clairvoyant(k, o, s, params, limit))(
          keys, obs, state)
    else:
      pstate = jax.vmap(bound.init, in_axes=(0, None))(obs, params.catalog)
    done = jnp.zeros(keys.shape[:1], bool)

    def act(k_act, obs, state, pstate):
      if clairvoyant:
        return bound.act_clairvoyant(k_act, pstate, obs, state, params, limit)
      return bound.act(k_act, pstate, obs, params.catalog)

    def cond(c):
      return jnp.logical_and(c[0] < limit, jnp.logical_not(jnp.all(c[5])))

    def body(c):
      t, keys, obs, state, pstate, done = c
      act_keys = jax.vmap(decision_key, in_axes=(0, None))(keys, t)
      action, pstate_n = jax.vmap(act)(act_keys, obs, state, pstate)
      # The dynamics ignore the key; the batched transition equals vmap(step_env) bitwise.
      obs_n, state_n, _, terminated, truncated, _ = env.step_env_batch(None, state, action,
                                                                       params)
      ended = terminated | truncated | (state_n.steps >= limit)
      obs, state, pstate = (select_rows(done, obs, obs_n), select_rows(done, state, state_n),
                            select_rows(done, pstate, pstate_n))
      return t + 1, keys, obs, state, pstate, done | ended

    t, _, _, state, _, done = jax.lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), keys, obs, state, pstate, done))
    metrics = jax.vmap(session_metrics, in_axes=(0, None, None))(state, params, env.window)
    metrics["completed"] = state.play_id >= env.num_videos
    return metrics, t

  return evaluate

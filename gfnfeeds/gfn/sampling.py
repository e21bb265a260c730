"""Trajectory sampling: one `lax.scan` of `max_length` steps with static shapes.

At step t the policy network runs ONCE on the states s_t of the batch. That
single output gives (a) the forward distribution from which a_t is drawn,
(b) log P_F(a_t | s_t) for the loss, (c) log F(s_t), and (d) the backward
distribution at s_t, which scores the transition s_{t-1} -> s_t that led
there. So when `sample_trajectories` is called inside a loss function under
`jax.grad`, the log-probabilities it returns are differentiable and the loss
needs no second forward pass (see `gfnfeeds.gfn.train`).

A trajectory of length L (forward actions, exit included) visits
s_0, ..., s_{L-1} = x and ends in the terminal (exited) state s_L. Step t is
valid iff t < L. The scan always runs `T = env.max_length` steps (static
shapes); finished rows are carried unchanged and their outputs masked. Whether
the network still runs on them is `active_buckets` (see `sample_trajectories`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from gfnfeeds.gfn.dag import DAGEnv, batch_apply
from gfnfeeds.gfn.networks import PolicyOutput

F32 = jnp.float32
PolicyFn = Callable[[Any, jax.Array, jax.Array], PolicyOutput]


@struct.dataclass
class Trajectories:
  """A batch of B complete trajectories padded to T = env.max_length actions.

  Attributes:
    states: env state pytree, leaves [B, T+1, ...]: s_0 .. s_T (s_t = s_L for t >= L).
    features: float32 [B, T+1, F]: featurize(s_t).
    cond: the conditioning pytree, leaves [B, ...].
    cond_features: float32 [B, C].
    actions: int32 [B, T]: a_t (the exit action at padded steps).
    mask: bool [B, T]: step t is valid (t < L).
    log_pf: float32 [B, T]: log P_F(a_t | s_t) of the policy itself (no exploration,
      temperature 1); 0 at padded steps.
    log_pb: float32 [B, T]: log P_B(s_t | s_{t+1}); 0 for the exit transition and at
      padded steps.
    log_flows: float32 [B, T+1]: log F(s_t) for t < L, log R(x) at t = L (the reward
      stands in for the flow of the exit edge's target, as in DB), 0 for t > L; all
      zero except position L when the policy has no flow head.
    log_rewards: float32 [B]: log R(x | cond).
    terminal_states: env state pytree, leaves [B, ...]: the exited states s_L.
    lengths: int32 [B]: L.
  """

  states: Any
  features: jax.Array
  cond: Any
  cond_features: jax.Array
  actions: jax.Array
  mask: jax.Array
  log_pf: jax.Array
  log_pb: jax.Array
  log_flows: jax.Array
  log_rewards: jax.Array
  terminal_states: Any
  lengths: jax.Array


def exploration_log_probs(logits: jax.Array, mask: jax.Array, epsilon, temperature) -> jax.Array:
  """log((1 - eps) softmax(logits / temperature) + eps * uniform(mask)), -inf off the mask.

  `mask` must have at least one true entry per row.
  """
  logits = jnp.where(mask, logits.astype(F32) / temperature, -jnp.inf)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  count = jnp.sum(mask, axis=-1, keepdims=True).astype(F32)
  log_u = jnp.where(mask, -jnp.log(count), -jnp.inf)
  epsilon = jnp.asarray(epsilon, F32)
  return jnp.logaddexp(jnp.log1p(-epsilon) + log_p, jnp.log(epsilon) + log_u)


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """log_softmax over the true entries of `mask`; rows with no true entry give zeros."""
  any_valid = jnp.any(mask, axis=-1, keepdims=True)
  safe_mask = jnp.logical_or(mask, jnp.logical_not(any_valid))
  out = jax.nn.log_softmax(jnp.where(safe_mask, logits.astype(F32), -jnp.inf), axis=-1)
  return jnp.where(jnp.logical_and(mask, any_valid), out, jnp.where(any_valid, -jnp.inf, 0.0))


def _policy_on_active(policy_fn: PolicyFn, params, features, cond_features, active,
                      num_buckets: int) -> PolicyOutput:
  """The policy on the rows where `active` only, in the smallest row bucket that holds them.

  Buckets: 0 rows (every row finished: the network is skipped) and B, B/2, ...,
  B/2^(num_buckets-1) rows. Active rows are gathered to the front, the network
  runs on the bucket (one `lax.switch` branch per bucket), outputs are scattered
  back; inactive rows get zeros (the caller masks them).
  """
  batch = features.shape[0]
  sizes = sorted({max(1, batch >> i) for i in range(num_buckets)})
  count = jnp.sum(active)
  branch = jnp.where(count == 0, 0, 1 + jnp.sum(jnp.asarray(sizes[:-1]) < count))
  # Row r of the bucket is the r-th active row; the tail of the bucket repeats row 0.
  slot = jnp.where(active, jnp.cumsum(active) - 1, batch)
  rows = jnp.zeros((batch,), jnp.int32).at[slot].set(jnp.arange(batch, dtype=jnp.int32),
                                                      mode="drop")
  out_shape = jax.eval_shape(lambda f, c: policy_fn(params, f, c), features, cond_features)

  def zeros(features, cond_features):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  def run(size):
    def f(features, cond_features):
      take = rows[:size]
      out = jax.checkpoint(policy_fn)(params, features[take], cond_features[take])
      keep = jnp.arange(size) < count  # drop the repeated tail rows
      return jax.tree.map(
          lambda o: jnp.zeros((batch,) + o.shape[1:], o.dtype).at[
              jnp.where(keep, take, batch)].set(o, mode="drop"), out)
    return f

  return jax.lax.switch(branch, [zeros] + [run(s) for s in sizes], features, cond_features)


def sample_trajectories(key: jax.Array, env: DAGEnv, policy_fn: PolicyFn, params, cond,
                        batch: int, epsilon=0.0, temperature=1.0,
                        active_buckets: int = 0) -> Trajectories:
  """Samples `batch` complete trajectories in one `lax.scan` of `env.max_length` steps.

  Args:
    key: PRNG key.
    env: the (static) environment.
    policy_fn: `policy_fn(params, features [N, F], cond_features [N, C]) -> PolicyOutput`.
    params: the policy parameters (differentiable through the returned log-probs
      and log-flows).
    cond: conditioning pytree with leaves [batch, ...] (or `()`).
    batch: number of trajectories B.
    epsilon: probability of drawing the action uniformly among the valid ones.
    temperature: divides the logits of the sampling distribution.
      epsilon and temperature may be traced (annealed without recompiling);
      they change only which actions are drawn, never `log_pf`.
    active_buckets: how finished rows are handled (static). 0 (default): the network
      runs on all B rows at every one of the T steps; finished rows cost as much as
      live ones. n > 0: per step, the unfinished rows are gathered into the smallest
      of the buckets 0 (network skipped), B, B/2, ..., B/2^(n-1) rows that holds
      them, the network runs on that bucket only (`lax.switch`) and its outputs are
      scattered back. The bucketed call is rematerialised (`jax.checkpoint`): under
      `jax.grad` its forward is recomputed on the bucket in the backward pass,
      because storing the residuals of every switch branch costs more than the
      bucketing saves. Not for use under `vmap` (the switch becomes a select that
      runs every bucket). Results equal those of 0 up to float rounding.

  Returns:
    Trajectories (see the class) with T = env.max_length.
  """
  steps = env.max_length
  exit_action = env.exit_action
  cond_features = batch_apply(env.cond_features, batch, cond)
  state0 = batch_apply(env.init, batch, cond)
  nb = env.num_backward_actions

  def network(features, active):
    if active_buckets > 0:
      return _policy_on_active(policy_fn, params, features, cond_features, active, active_buckets)
    return policy_fn(params, features, cond_features)

  def body(carry, key_t):
    state, prev_backward = carry
    active = jnp.logical_not(jax.vmap(env.is_terminal)(state))
    features = batch_apply(env.featurize, batch, state, cond)
    out = network(features, active)

    # Terminal rows get an all-true mask so that no row is empty (their values are dropped).
    fmask = batch_apply(env.forward_mask, batch, state, cond)
    fmask = jnp.logical_or(fmask, jnp.logical_not(active)[:, None])
    logits = out.forward_logits.astype(F32)
    log_pf_all = masked_log_softmax(logits, fmask)
    sample_lp = exploration_log_probs(jax.lax.stop_gradient(logits), fmask, epsilon, temperature)
    action = jax.random.categorical(key_t, sample_lp, axis=-1).astype(jnp.int32)
    action = jnp.where(active, action, exit_action)
    log_pf = jnp.take_along_axis(log_pf_all, action[:, None], axis=-1)[:, 0]
    log_pf = jnp.where(active, log_pf, 0.0)

    # log P_B of the transition s_{t-1} -> s_t, read off the backward head at s_t.
    bmask = batch_apply(env.backward_mask, batch, state, cond)
    if out.backward_logits is not None:
      log_pb_all = masked_log_softmax(out.backward_logits, bmask)
      log_pb_in = jnp.take_along_axis(log_pb_all, prev_backward[:, None], axis=-1)[:, 0]
    else:
      log_pb_in = -jnp.log(jnp.maximum(jnp.sum(bmask, axis=-1), 1).astype(F32))
    log_pb_in = jnp.where(active, log_pb_in, 0.0)
    log_flow = (jnp.where(active, out.log_flow.astype(F32), 0.0) if out.log_flow is not None
                else jnp.zeros((batch,), F32))

    child = batch_apply(env.step, batch, state, action, cond)
    next_state = jax.tree.map(
        lambda c, s: jnp.where(active.reshape((batch,) + (1,) * (c.ndim - 1)), c, s), child, state)
    backward = batch_apply(env.backward_action, batch, state, action, cond).astype(jnp.int32)
    backward = jnp.clip(backward, 0, max(nb - 1, 0))
    ys = dict(state=state, features=features, action=action, active=active, log_pf=log_pf,
              log_pb_in=log_pb_in, log_flow=log_flow)
    return (next_state, backward), ys

  keys = jax.random.split(key, steps)
  init_carry = (state0, jnp.zeros((batch,), jnp.int32))
  (final_state, _), ys = jax.lax.scan(body, init_carry, keys)
  ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)  # [B, T, ...]

  mask = ys["active"]
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  log_rewards = batch_apply(env.log_reward, batch, final_state, cond).astype(F32)
  # The exit transition (the last valid step) has P_B = 1; the scan's last step has no successor.
  log_pb = jnp.concatenate([ys["log_pb_in"][:, 1:], jnp.zeros((batch, 1), F32)], axis=1)
  log_pb = jnp.where(mask, log_pb, 0.0)
  pos = jnp.arange(steps + 1)[None, :]
  flows = jnp.concatenate([ys["log_flow"], jnp.zeros((batch, 1), F32)], axis=1)
  log_flows = jnp.where(pos < lengths[:, None], flows,
                        jnp.where(pos == lengths[:, None], log_rewards[:, None], 0.0))
  states = jax.tree.map(lambda s, f: jnp.concatenate([s, f[:, None]], axis=1),
                        ys["state"], final_state)
  final_features = batch_apply(env.featurize, batch, final_state, cond)
  features = jnp.concatenate([ys["features"], final_features[:, None]], axis=1)
  return Trajectories(states=states, features=features, cond=cond, cond_features=cond_features,
                      actions=ys["action"], mask=mask, log_pf=ys["log_pf"], log_pb=log_pb,
                      log_flows=log_flows, log_rewards=log_rewards, terminal_states=final_state,
                      lengths=lengths)


def sample_terminal_states(key: jax.Array, env: DAGEnv, policy_fn: PolicyFn, params, cond,
                           num: int, batch: int, epsilon=0.0, temperature=1.0):
  """Terminal states of `num` = k * `batch` trajectories, sampled in k scanned chunks.

  `cond` has leaves [batch, ...] (or is `()`); it is reused by every chunk.
  Returns the terminal state pytree with leaves [num, ...].
  """
  if num % batch:
    raise ValueError(f"sample_terminal_states: num={num} is not a multiple of batch={batch}")

  def chunk(_, k):
    traj = sample_trajectories(k, env, policy_fn, params, cond, batch, epsilon, temperature)
    return None, traj.terminal_states

  _, states = jax.lax.scan(chunk, None, jax.random.split(key, num // batch))
  return jax.tree.map(lambda s: s.reshape((num,) + s.shape[2:]), states)

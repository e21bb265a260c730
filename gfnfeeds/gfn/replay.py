"""Teacher-forced evaluation of given trajectories: replay buffers and relabelling.

`sample_trajectories` draws actions and scores them in one pass. When the
actions are already known (stored trajectories, or the same trajectories
re-conditioned on other preferences: relabelling), `replay_trajectories`
rebuilds the states with `env.step` (no network inside the scan) and then runs
the policy network ONCE on all B (T + 1) states, which is cheaper than T calls
on B rows. The result is a `Trajectories` batch, so every loss applies.

Some rewards are not a function of (x, cond) alone: the feeds plan DAG scores
a plan in belief scenarios shared by all candidates of a decision, with the
Catalog. `with_log_rewards` attaches such externally computed rewards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gfnfeeds.gfn.dag import DAGEnv, batch_apply
from gfnfeeds.gfn.sampling import PolicyFn, Trajectories, masked_log_softmax

F32 = jnp.float32


def with_log_rewards(traj: Trajectories, log_rewards: jax.Array) -> Trajectories:
  """`traj` with log R(x) replaced by `log_rewards` [B] (also where it stands in `log_flows`)."""
  log_rewards = jnp.asarray(log_rewards, F32)
  pos = jnp.arange(traj.log_flows.shape[1])[None, :]
  log_flows = jnp.where(pos == traj.lengths[:, None], log_rewards[:, None], traj.log_flows)
  return traj.replace(log_rewards=log_rewards, log_flows=log_flows)


def replay_trajectories(env: DAGEnv, policy_fn: PolicyFn, params, cond, actions: jax.Array,
                        log_rewards: jax.Array | None = None) -> Trajectories:
  """Re-evaluates the trajectories that take `actions` from s_0, under `params` and `cond`.

  Args:
    env: the (static) environment.
    policy_fn: as in `sample_trajectories`.
    params: policy parameters (the returned log-probabilities and log-flows are
      differentiable with respect to them).
    cond: conditioning pytree with leaves [B, ...] (or `()`).
    actions: int32 [B, T] with T = env.max_length: valid forward actions, the exit
      included; entries after the exit are ignored.
    log_rewards: float32 [B]; None computes `env.log_reward` of the terminal states.

  Returns:
    Trajectories equal (up to float rounding) to what `sample_trajectories` returns
    when it draws the same actions with the same parameters.
  """
  batch, steps = actions.shape
  if steps != env.max_length:
    raise ValueError(f"replay_trajectories: actions have {steps} steps, "
                     f"env.max_length is {env.max_length}")
  exit_action = env.exit_action
  cond_features = batch_apply(env.cond_features, batch, cond)
  state0 = batch_apply(env.init, batch, cond)

  def body(state, action):
    active = jnp.logical_not(jax.vmap(env.is_terminal)(state))
    action = jnp.where(active, action, exit_action).astype(jnp.int32)
    fmask = batch_apply(env.forward_mask, batch, state, cond)
    bmask = batch_apply(env.backward_mask, batch, state, cond)
    features = batch_apply(env.featurize, batch, state, cond)
    child = batch_apply(env.step, batch, state, action, cond)
    next_state = jax.tree.map(
        lambda c, s: jnp.where(active.reshape((batch,) + (1,) * (c.ndim - 1)), c, s), child, state)
    backward = batch_apply(env.backward_action, batch, state, action, cond).astype(jnp.int32)
    return next_state, dict(state=state, features=features, fmask=fmask, bmask=bmask,
                            action=action, active=active, backward=backward)

  final_state, ys = jax.lax.scan(body, state0, jnp.swapaxes(actions, 0, 1))
  ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)  # [B, T, ...]
  mask = ys["active"]
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  final_features = batch_apply(env.featurize, batch, final_state, cond)
  features = jnp.concatenate([ys["features"], final_features[:, None]], axis=1)

  # One network call on every visited state s_0 .. s_{T-1}.
  flat = ys["features"].reshape((batch * steps, -1))
  out = policy_fn(params, flat, jnp.repeat(cond_features, steps, axis=0))
  logits = out.forward_logits.reshape((batch, steps, -1))
  fmask = jnp.logical_or(ys["fmask"], jnp.logical_not(mask)[..., None])
  log_pf = jnp.take_along_axis(masked_log_softmax(logits, fmask), ys["action"][..., None],
                               axis=-1)[..., 0]
  log_pf = jnp.where(mask, log_pf, 0.0)

  # log P_B(s_t | s_{t+1}) is read at s_{t+1}; the exit transition has P_B = 1.
  if out.backward_logits is not None:
    nb = env.num_backward_actions
    blogits = out.backward_logits.reshape((batch, steps, nb))
    log_pb_all = masked_log_softmax(blogits, ys["bmask"])
    prev = jnp.clip(ys["backward"], 0, nb - 1)
    log_pb_next = jnp.take_along_axis(log_pb_all[:, 1:], prev[:, :-1, None], axis=-1)[..., 0]
  else:
    counts = jnp.maximum(jnp.sum(ys["bmask"], axis=-1), 1).astype(F32)
    log_pb_next = -jnp.log(counts[:, 1:])
  log_pb = jnp.concatenate([log_pb_next, jnp.zeros((batch, 1), F32)], axis=1)
  not_exit = jnp.arange(steps)[None, :] < (lengths - 1)[:, None]
  log_pb = jnp.where(jnp.logical_and(mask, not_exit), log_pb, 0.0)

  if log_rewards is None:
    log_rewards = batch_apply(env.log_reward, batch, final_state, cond)
  log_rewards = jnp.asarray(log_rewards, F32)
  pos = jnp.arange(steps + 1)[None, :]
  flow = (out.log_flow.reshape((batch, steps)).astype(F32) if out.log_flow is not None
          else jnp.zeros((batch, steps), F32))
  flows = jnp.concatenate([flow, jnp.zeros((batch, 1), F32)], axis=1)
  log_flows = jnp.where(pos < lengths[:, None], flows,
                        jnp.where(pos == lengths[:, None], log_rewards[:, None], 0.0))
  states = jax.tree.map(lambda s, f: jnp.concatenate([s, f[:, None]], axis=1),
                        ys["state"], final_state)
  return Trajectories(states=states, features=features, cond=cond, cond_features=cond_features,
                      actions=ys["action"], mask=mask, log_pf=log_pf, log_pb=log_pb,
                      log_flows=jnp.where(pos <= lengths[:, None], log_flows, 0.0),
                      log_rewards=log_rewards, terminal_states=final_state, lengths=lengths)

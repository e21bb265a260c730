"""GFlowNet losses as pure functions of a batch of `Trajectories`, in log space.

Notation for one trajectory of length L: states s_0 .. s_{L-1} = x, exit into
s_L; pf_t = log P_F(a_t | s_t), pb_t = log P_B(s_t | s_{t+1}) (pb_{L-1} = 0, the
exit transition), logF_t = log F(s_t) for t < L and logF_L = log R(x)
(`Trajectories.log_flows`). Padded steps (t >= L) are excluded with `where`,
never by multiplying, so whatever they hold (even inf or NaN) cannot leak into
the loss. Each function returns `(loss, diagnostics)` with a scalar float32 loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gfnfeeds.gfn.dag import DAGEnv, batch_apply
from gfnfeeds.gfn.sampling import PolicyFn, Trajectories, masked_log_softmax

F32 = jnp.float32


def _common(traj: Trajectories) -> dict:
  return dict(mean_log_reward=jnp.mean(traj.log_rewards),
              mean_length=jnp.mean(traj.lengths.astype(F32)))


def _masked(x, mask):
  return jnp.where(mask, x, 0.0)


def trajectory_balance(traj: Trajectories, log_z: jax.Array):
  """Trajectory balance (Malkin et al., 2022).

  loss = mean_b (log Z(c_b) + sum_t pf_t - sum_t pb_t - log R(x_b))^2.

  Args:
    traj: the batch.
    log_z: float32 [B], log Z of each trajectory's conditioning.
  """
  sum_pf = jnp.sum(_masked(traj.log_pf, traj.mask), axis=1)
  sum_pb = jnp.sum(_masked(traj.log_pb, traj.mask), axis=1)
  residual = log_z.astype(F32) + sum_pf - sum_pb - traj.log_rewards
  loss = jnp.mean(jnp.square(residual))
  return loss, dict(_common(traj), loss=loss, log_z=jnp.mean(log_z),
                    mean_abs_residual=jnp.mean(jnp.abs(residual)))


def detailed_balance(traj: Trajectories):
  """Detailed balance (Bengio et al., 2023), with the reward as the flow of the exit target.

  loss = sum_{b, t < L_b} (logF_t + pf_t - logF_{t+1} - pb_t)^2 / sum_b L_b, i.e.
  the mean over valid transitions; at t = L-1 the condition reads
  F(x) P_F(exit | x) = R(x). Needs a policy with a flow head.
  """
  flows = traj.log_flows
  residual = flows[:, :-1] + traj.log_pf - flows[:, 1:] - traj.log_pb
  residual = _masked(residual, traj.mask)
  count = jnp.maximum(jnp.sum(traj.mask), 1)
  loss = jnp.sum(jnp.square(residual)) / count
  return loss, dict(_common(traj), loss=loss, log_z=jnp.mean(flows[:, 0]),
                    mean_abs_residual=jnp.sum(jnp.abs(residual)) / count)


def subtrajectory_balance(traj: Trajectories, lamda: float = 0.9):
  """Subtrajectory balance SubTB(lambda) (Madan et al., 2023), geometric weights per trajectory.

  For every pair 0 <= i < j <= L:
    delta_ij = logF_i + sum_{i <= t < j} (pf_t - pb_t) - logF_j,
  and the loss of a trajectory is sum_{i<j} lambda^(j-i) delta_ij^2 / sum_{i<j} lambda^(j-i)
  ("geometric within"); the batch loss is the mean over trajectories. All
  (T+1)^2 pairs are formed at once from u_k = logF_k - sum_{t<k} (pf_t - pb_t),
  delta_ij = u_i - u_j. Needs a policy with a flow head. lambda -> 0 gives DB
  (up to the per-trajectory normalisation), a large lambda weights TB-like
  long subtrajectories.
  """
  steps = traj.mask.shape[1]
  increments = _masked(traj.log_pf - traj.log_pb, traj.mask)
  cum = jnp.concatenate([jnp.zeros_like(increments[:, :1]), jnp.cumsum(increments, axis=1)], axis=1)
  pos = jnp.arange(steps + 1)
  in_traj = pos[None, :] <= traj.lengths[:, None]  # [B, T+1]
  u = jnp.where(in_traj, traj.log_flows - cum, 0.0)
  delta = u[:, :, None] - u[:, None, :]  # [B, i, j]
  gap = pos[None, :] - pos[:, None]  # j - i
  valid = jnp.logical_and(gap[None] > 0, in_traj[:, None, :])  # i < j <= L
  weight = jnp.where(valid, jnp.asarray(lamda, F32) ** jnp.maximum(gap, 0).astype(F32)[None], 0.0)
  per_traj = (jnp.sum(weight * jnp.square(jnp.where(valid, delta, 0.0)), axis=(1, 2))
              / jnp.maximum(jnp.sum(weight, axis=(1, 2)), 1e-30))
  loss = jnp.mean(per_traj)
  return loss, dict(_common(traj), loss=loss, log_z=jnp.mean(traj.log_flows[:, 0]))


def parent_log_inflows(env: DAGEnv, policy_fn: PolicyFn, params, traj: Trajectories) -> jax.Array:
  """float32 [B, T]: log sum_{p in Par(s_t)} F(p -> s_t) for each visited state s_t.

  Edge flows are parametrised as log F(p -> s) = log F(p) + log P_F(s | p) (flow
  head plus the masked log-softmax of the forward logits at p). The network runs
  on every parent slot of every state s_0 .. s_{T-1}: B T num_backward_actions
  rows, the extra cost of flow matching. Entries without a parent (s_0) or past
  the trajectory are 0; `flow_matching` only reads 1 <= t < L.
  """
  batch, steps = traj.mask.shape
  nb = env.num_backward_actions
  states = jax.tree.map(lambda s: s[:, :steps].reshape((batch * steps,) + s.shape[2:]),
                        traj.states)
  cond = jax.tree.map(lambda c: jnp.repeat(c, steps, axis=0), traj.cond)
  cond_features = jnp.repeat(traj.cond_features, steps, axis=0)
  n = batch * steps

  def one_parent(b):
    back = jnp.full((n,), b, jnp.int32)
    parents = batch_apply(env.backward_step, n, states, back, cond)
    fwd = batch_apply(env.forward_action, n, states, back, cond).astype(jnp.int32)
    out = policy_fn(params, batch_apply(env.featurize, n, parents, cond), cond_features)
    log_pf = masked_log_softmax(out.forward_logits, batch_apply(env.forward_mask, n, parents, cond))
    log_pf = jnp.take_along_axis(log_pf, fwd[:, None], axis=-1)[:, 0]
    return out.log_flow.astype(F32) + log_pf

  edges = jnp.stack([one_parent(b) for b in range(nb)], axis=-1)  # [n, nb]
  valid = batch_apply(env.backward_mask, n, states, cond)
  any_valid = jnp.any(valid, axis=-1)
  edges = jnp.where(any_valid[:, None], jnp.where(valid, edges, -jnp.inf), 0.0)
  inflow = jnp.where(any_valid, jax.nn.logsumexp(edges, axis=-1), 0.0)
  return inflow.reshape(batch, steps)


def flow_matching(traj: Trajectories, log_inflows: jax.Array):
  """Flow matching (Bengio et al., 2021) with edge flows F(s -> s') = F(s) P_F(s' | s).

  With this parametrisation the outflow of s (the exit edge included) is F(s)
  by construction, so the flow-matching conditions become, for each trajectory,
    state terms, 1 <= t <= L-1:  log sum_{p in Par(s_t)} F(p -> s_t) - logF_t
    reward term:                 logF_{L-1} + log P_F(exit | x) - log R(x)
  (the exit edge carries exactly the reward). The loss is the mean of the squared
  terms over the batch (state and reward terms weighted alike). The policy needs
  a flow head; the backward policy plays no role.

  Args:
    traj: the batch.
    log_inflows: float32 [B, T] from `parent_log_inflows`.
  """
  batch, steps = traj.mask.shape
  t = jnp.arange(steps)[None, :]
  state_valid = jnp.logical_and(traj.mask, t >= 1)
  state_res = _masked(log_inflows - traj.log_flows[:, :steps], state_valid)
  last = jnp.maximum(traj.lengths - 1, 0)[:, None]
  exit_lp = jnp.take_along_axis(traj.log_pf, last, axis=1)[:, 0]
  flow_x = jnp.take_along_axis(traj.log_flows, last, axis=1)[:, 0]
  reward_res = flow_x + exit_lp - traj.log_rewards
  count = jnp.sum(state_valid) + batch
  flow_loss = jnp.sum(jnp.square(state_res))
  reward_loss = jnp.sum(jnp.square(reward_res))
  loss = (flow_loss + reward_loss) / count
  return loss, dict(_common(traj), loss=loss, log_z=jnp.mean(traj.log_flows[:, 0]),
                    flow_loss=flow_loss / jnp.maximum(jnp.sum(state_valid), 1),
                    reward_loss=reward_loss / batch)

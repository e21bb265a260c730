"""The generic GFlowNet core (gfnfeeds.gfn) on HyperGrid.

Training tests: on HyperGrid(ndim=2, height=8) (64 terminal states; the
standard reward with both its R1 and R2 bands; also the (2, 8) benchmark grid)
each loss trains a 2x64 MLP sampler (batch 64, epsilon 0.05, 1000 Adam steps
fused in one scan). Its terminal distribution over 20,000 sampled trajectories
must be within total variation 0.05 of the exact target R(x)/Z. Why 0.05: a
perfect sampler's empirical TV from 20,000 draws over these 64 states is itself
about 0.018 (E TV ~ 1/2 sqrt(2/(pi N)) sum_x sqrt(p_x (1 - p_x))), so 0.05
leaves ~0.03 for the model, while a fresh sampler sits at 0.68-0.75 (asserted
> 0.3). The exact terminal distribution of the trained policy (propagated
through the DAG, no sampling noise) must be within 0.02; over 8 seeds it was
at most 0.003 (notes_gfn.md).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnfeeds.gfn import losses as L
from gfnfeeds.gfn import train as T
from gfnfeeds.gfn.hypergrid import HyperGrid, grid_modes, total_variation
from gfnfeeds.gfn.networks import PolicyOutput
from gfnfeeds.gfn.sampling import sample_terminal_states, sample_trajectories

GRID = HyperGrid(ndim=2, height=8)
HIDDEN = (64, 64)
NUM_SAMPLES = 20_000
TV_EMPIRICAL_MAX = 0.05
TV_EXACT_MAX = 0.02
TV_FRESH_MIN = 0.3


# ------------------------------------------------------------------ helpers


@dataclasses.dataclass(frozen=True)
class TemperedGrid(HyperGrid):
  """HyperGrid conditioned on an inverse temperature beta = cond: log R(x|beta) = beta log R(x)."""

  def log_reward(self, state, cond=()):
    return jnp.asarray(cond, jnp.float32) * jnp.log(self.reward(state.pos))


BETAS = (0.5, 2.0)


def _draw_beta(key, batch):
  return jax.random.choice(key, jnp.asarray(BETAS, jnp.float32), (batch,))


def _params(env, loss, hidden=HIDDEN, seed=0):
  model = T.make_model(env, loss, hidden)
  optimizer = T.make_optimizer()
  return model, optimizer, T.init_train_state(jax.random.PRNGKey(seed), env, model, optimizer)


def _perfect_tabular_policy(env: HyperGrid):
  """A lookup-table policy with exact flows for the uniform backward policy.

  F(s) = R(s) + sum_{children s'} F(s') P_B(s | s'), P_F(s' | s) = F(s') P_B(s | s') / F(s),
  P_F(exit | s) = R(s) / F(s): a perfect flow, so every loss must vanish.
  """
  shape = (env.height,) * env.ndim
  reward = np.asarray(env.reward(jnp.asarray(env.all_positions()))).astype(np.float64)
  reward = reward.reshape(shape)
  flow = np.zeros(shape)
  logits = np.full(shape + (env.num_actions,), -1e30)
  order = sorted(np.ndindex(*shape), key=lambda s: -sum(s))
  for s in order:
    total = reward[s]
    child_terms = {}
    for d in range(env.ndim):
      if s[d] < env.height - 1:
        child = list(s)
        child[d] += 1
        child = tuple(child)
        pb = 1.0 / sum(1 for c in child if c > 0)
        child_terms[d] = flow[child] * pb
        total += child_terms[d]
    flow[s] = total
    for d, term in child_terms.items():
      logits[s + (d,)] = np.log(term / total)
    logits[s + (env.exit_action,)] = np.log(reward[s] / total)
  table_logits = jnp.asarray(logits.reshape(-1, env.num_actions), jnp.float32)
  table_flow = jnp.asarray(np.log(flow).reshape(-1), jnp.float32)

  def policy_fn(params, features, cond_features):
    del params, cond_features
    pos = jnp.argmax(features.reshape(features.shape[0], env.ndim, env.height), axis=-1)
    flat = jnp.ravel_multi_index(tuple(pos.T), shape, mode="clip")
    return PolicyOutput(forward_logits=table_logits[flat], log_flow=table_flow[flat])

  return policy_fn, float(np.log(flow[(0,) * env.ndim]))


def _all_losses(env, traj, log_z, inflows):
  return {"tb": L.trajectory_balance(traj, log_z)[0],
          "db": L.detailed_balance(traj)[0],
          "subtb": L.subtrajectory_balance(traj, 0.9)[0],
          "fm": L.flow_matching(traj, inflows)[0]}


# ------------------------------------------------------------------ environment


def test_hypergrid_standard_reward():
  env = GRID
  pos = env.all_positions()
  ax = np.abs(pos / (env.height - 1) - 0.5)
  standard = (0.1 + 0.5 * np.prod((ax > 0.25) & (ax <= 0.5), axis=-1)
              + 2.0 * np.prod((ax > 0.3) & (ax < 0.4), axis=-1))
  np.testing.assert_allclose(np.asarray(env.reward(jnp.asarray(pos))), standard, rtol=1e-6)
  p = env.exact_distribution()
  np.testing.assert_allclose(p.ravel(), standard / standard.sum())
  assert sorted(grid_modes(env)) == [(1, 1), (1, 6), (6, 1), (6, 6)]
  assert env.max_length == 15 and env.num_actions == 3 and env.feature_dim == 16
  # H = 5 puts a_d = 0.25 exactly on the R1 band's open edge: outside.
  assert float(HyperGrid(2, 5).reward(jnp.asarray([1, 0]))) == pytest.approx(0.1)


def test_sampling_respects_masks_and_stores_policy_log_probs():
  env = HyperGrid(ndim=3, height=4)
  model, _, state = _params(env, "db")
  batch = 256
  traj = sample_trajectories(jax.random.PRNGKey(1), env, model.apply, state.params, (), batch,
                             epsilon=0.5, temperature=2.0)
  steps = env.max_length
  actions, mask, lengths = map(np.asarray, (traj.actions, traj.mask, traj.lengths))
  assert traj.features.shape == (batch, steps + 1, env.feature_dim)
  assert traj.log_flows.shape == (batch, steps + 1) and traj.log_pf.shape == (batch, steps)
  assert np.all((lengths >= 1) & (lengths <= steps))
  np.testing.assert_array_equal(mask, np.arange(steps)[None] < lengths[:, None])
  last = actions[np.arange(batch), lengths - 1]
  assert np.all(last == env.exit_action)
  is_last = np.arange(steps)[None] == lengths[:, None] - 1
  assert np.all((actions == env.exit_action) == (~mask | is_last))
  assert np.all(np.asarray(traj.terminal_states.done))
  assert len(np.unique(lengths)) > 3  # exploration made varied trajectories

  pos = np.asarray(traj.states.pos)  # [B, T+1, D]
  for t in range(steps):
    fmask = np.asarray(jax.vmap(env.forward_mask)(jax.tree.map(lambda s: s[:, t], traj.states)))
    valid = fmask[np.arange(batch), actions[:, t]]
    assert np.all(valid[mask[:, t]]), f"invalid action at step {t}"
  # Replaying the actions reproduces the terminal states; the grid never overflows.
  counts = np.stack([(actions == d).sum(axis=1) for d in range(env.ndim)], axis=-1)
  np.testing.assert_array_equal(counts, np.asarray(traj.terminal_states.pos))
  assert pos.min() >= 0 and pos.max() <= env.height - 1

  # The stored log-probs are the policy's own (temperature 1, no exploration),
  # recomputed here from the stored features.
  out = model.apply(state.params, traj.features, jnp.zeros((batch, steps + 1, 0), jnp.float32))
  fmask = jax.vmap(jax.vmap(env.forward_mask))(traj.states)
  lp = jax.nn.log_softmax(jnp.where(fmask, out.forward_logits, -jnp.inf), axis=-1)
  lp = np.take_along_axis(np.asarray(lp[:, :-1]), actions[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(np.asarray(traj.log_pf)[mask], lp[mask], rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(traj.log_pf)[~mask] == 0.0)
  bmask = jax.vmap(jax.vmap(env.backward_mask))(traj.states)
  lpb = jax.nn.log_softmax(jnp.where(bmask, out.backward_logits, -jnp.inf), axis=-1)
  child_back = np.minimum(actions, env.num_backward_actions - 1)
  lpb = np.take_along_axis(np.asarray(lpb[:, 1:]), child_back[..., None], axis=-1)[..., 0]
  non_exit = mask & (actions != env.exit_action)
  np.testing.assert_allclose(np.asarray(traj.log_pb)[non_exit], lpb[non_exit], rtol=1e-5,
                             atol=1e-6)
  assert np.all(np.asarray(traj.log_pb)[~non_exit] == 0.0)
  flows = np.asarray(traj.log_flows)
  np.testing.assert_allclose(flows[:, :-1][mask], np.asarray(out.log_flow)[:, :-1][mask],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(flows[np.arange(batch), lengths], np.asarray(traj.log_rewards))

  # Bucketing the network over unfinished rows changes nothing but rounding.
  bucketed = sample_trajectories(jax.random.PRNGKey(1), env, model.apply, state.params, (),
                                 batch, epsilon=0.5, temperature=2.0, active_buckets=4)
  np.testing.assert_array_equal(np.asarray(bucketed.actions), actions)
  np.testing.assert_allclose(np.asarray(bucketed.log_pf), np.asarray(traj.log_pf), atol=1e-5)
  np.testing.assert_allclose(np.asarray(bucketed.log_flows), flows, atol=1e-5)

  # So does the shrinking-batch sampler (sizes 256, 192, 128, 64); under vmap too.
  def compact(key, params):
    return sample_trajectories(key, env, model.apply, params, (), batch, epsilon=0.5,
                               temperature=2.0, compact=4)
  shrunk = jax.jit(compact)(jax.random.PRNGKey(1), state.params)
  _assert_same_trajectories(shrunk, traj)
  keys = jnp.stack([jax.random.PRNGKey(1), jax.random.PRNGKey(2)])
  both = jax.jit(jax.vmap(compact, in_axes=(0, None)))(keys, state.params)
  _assert_same_trajectories(jax.tree.map(lambda x: x[0], both), traj)
  second = sample_trajectories(keys[1], env, model.apply, state.params, (), batch, epsilon=0.5,
                               temperature=2.0)
  _assert_same_trajectories(jax.tree.map(lambda x: x[1], both), second)


def _assert_same_trajectories(a, b):
  """Same integer records (actions, states, lengths), float records up to rounding."""
  for name in ("actions", "mask", "lengths"):
    np.testing.assert_array_equal(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)))
  for x, y in zip(jax.tree.leaves((a.states, a.terminal_states)),
                  jax.tree.leaves((b.states, b.terminal_states))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for name in ("features", "cond_features", "log_pf", "log_pb", "log_flows", "log_rewards"):
    np.testing.assert_allclose(np.asarray(getattr(a, name)), np.asarray(getattr(b, name)),
                               atol=1e-5)


@pytest.mark.parametrize("loss", T.LOSSES)
def test_compact_sampler_gradient_equals_plain(loss):
  """The shrinking-batch sampler's custom backward pass gives the plain path's gradient."""
  env = TemperedGrid(ndim=3, height=4)  # a conditioned env: cond rows follow their trajectories
  model = T.make_model(env, loss, (32, 32))
  state = T.init_train_state(jax.random.PRNGKey(0), env, model, T.make_optimizer(),
                             cond_example=jnp.float32(1.0))
  key = jax.random.PRNGKey(3)

  def grad(compact, chunk):
    loss_fn = T.make_loss_fn(env, model, loss, 48, epsilon=0.3, cond_fn=_draw_beta,
                             compact=compact, compact_chunk=chunk)
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, key)[0]))(state.params)

  (v0, g0), (v1, g1) = grad(0, 0), grad(3, 40)  # sizes 48, 32, 16; 40-row chunks
  np.testing.assert_allclose(float(v1), float(v0), rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0))
  assert scale > 0
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5 * scale)


# ------------------------------------------------------------------ losses


def test_losses_vanish_for_a_perfect_flow():
  env = HyperGrid(ndim=2, height=3)
  policy_fn, log_z = _perfect_tabular_policy(env)
  np.testing.assert_allclose(np.asarray(env.policy_distribution(policy_fn, None)),
                             env.exact_distribution(), atol=1e-6)

  @jax.jit
  def evaluate(key, log_z):
    traj = sample_trajectories(key, env, policy_fn, None, (), 64, epsilon=0.3)
    inflows = L.parent_log_inflows(env, policy_fn, None, traj)
    return _all_losses(env, traj, jnp.full((64,), log_z, jnp.float32), inflows)

  for name, value in evaluate(jax.random.PRNGKey(0), log_z).items():
    assert float(value) < 1e-10, (name, float(value))
  # A wrong log Z is seen by TB (and only TB has log Z as an input).
  assert float(evaluate(jax.random.PRNGKey(0), log_z + 0.5)["tb"]) == pytest.approx(0.25)


def test_losses_are_finite_and_ignore_padded_steps():
  env = HyperGrid(ndim=2, height=5)
  batch = 32
  for loss in T.LOSSES:
    model, _, state = _params(env, loss, hidden=(32, 32))
    loss_fn = T.make_loss_fn(env, model, loss, batch, epsilon=0.2)

    @jax.jit
    def check(params, key):
      traj = sample_trajectories(key, env, model.apply, params, (), batch, epsilon=0.2)
      log_z = model.apply(params, traj.cond_features, method=model.log_z)
      inflows = (L.parent_log_inflows(env, model.apply, params, traj) if loss == "fm"
                 else jnp.zeros(traj.mask.shape, jnp.float32))
      clean = _all_losses(env, traj, log_z, inflows)[loss]
      pad = ~traj.mask
      pad_flow = jnp.arange(env.max_length + 1)[None] > traj.lengths[:, None]
      pad_inflow = jnp.logical_or(pad, jnp.arange(env.max_length)[None] == 0)
      dirty = traj.replace(log_pf=jnp.where(pad, jnp.nan, traj.log_pf),
                           log_pb=jnp.where(pad, 1e6, traj.log_pb),
                           log_flows=jnp.where(pad_flow, jnp.inf, traj.log_flows))
      dirty = _all_losses(env, dirty, log_z, jnp.where(pad_inflow, -1e6, inflows))[loss]
      grads = jax.grad(lambda p: loss_fn(p, key)[0])(params)
      return clean, dirty, grads, jnp.sum(pad)

    clean, dirty, grads, num_padded = check(state.params, jax.random.PRNGKey(2))
    assert int(num_padded) > 0
    assert np.isfinite(float(clean)) and float(clean) > 0.0, loss
    assert float(dirty) == float(clean), loss
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads)), loss


# ------------------------------------------------------------------ training step


def test_train_step_jit_matches_eager_and_is_deterministic():
  env = HyperGrid(ndim=2, height=4)
  model, optimizer, state = _params(env, "tb", hidden=(32, 32))
  args = (env, model, "tb", optimizer, 16)
  jitted = T.make_train_step(*args, epsilon=0.1)
  eager = T.make_train_step(*args, epsilon=0.1, jit=False)
  key = jax.random.PRNGKey(7)
  s1, m1 = jitted(state, key)
  s2, m2 = jitted(state, key)
  s3, m3 = eager(state, key)  # op by op (the scan body runs as one primitive)
  for a, b, c in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), jax.tree.leaves(s3)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(m1["loss"]), float(m3["loss"]), rtol=1e-5)
  assert float(m1["loss"]) == float(m2["loss"])
  _, m4 = jitted(state, jax.random.PRNGKey(8))
  assert float(m4["loss"]) != float(m1["loss"])
  # log Z has its own learning rate: Adam's first step moves it by ~lr = 0.1.
  assert abs(float(s1.params["params"]["log_z"]["value"])) == pytest.approx(0.1, rel=1e-3)


def test_train_is_vmappable_over_seeds():
  env = HyperGrid(2, 4)
  config = T.TrainConfig(env=env, loss="subtb", hidden=(16,), batch=8, num_steps=3)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  params_v, metrics_v = jax.vmap(lambda k: T.train(k, config))(keys)
  assert metrics_v["loss"].shape == (2, 3)
  for i in range(2):
    params, metrics = T.train(keys[i], config)
    np.testing.assert_allclose(np.asarray(metrics_v["loss"][i]), np.asarray(metrics["loss"]),
                               rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_v), jax.tree.leaves(params)):
      np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ each loss learns the target


@pytest.mark.parametrize("loss,compact", [("tb", 0), ("db", 0), ("subtb", 0), ("fm", 0),
                                          ("tb", 4)])
def test_loss_trains_sampler_to_target(loss, compact):
  env = GRID
  target = env.exact_distribution()
  config = T.TrainConfig(env=env, loss=loss, hidden=HIDDEN, batch=64, num_steps=1000,
                         learning_rate=1e-3, log_z_learning_rate=1e-1, epsilon=0.05,
                         compact=compact)
  model = T.make_model(env, loss, HIDDEN)
  sample = jax.jit(lambda key, params: sample_terminal_states(
      key, env, model.apply, params, (), NUM_SAMPLES, 1000))

  _, _, fresh = _params(env, loss, seed=0)
  fresh_tv = total_variation(target, env.empirical_distribution(
      sample(jax.random.PRNGKey(11), fresh.params)))
  assert fresh_tv > TV_FRESH_MIN

  params, metrics = T.train(jax.random.PRNGKey(0), config)
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
  tv_exact = total_variation(target, env.policy_distribution(model.apply, params))
  tv_empirical = total_variation(target, env.empirical_distribution(
      sample(jax.random.PRNGKey(12), params)))
  print(f"{loss} (compact={compact}): fresh TV {fresh_tv:.3f}, trained TV empirical "
        f"{tv_empirical:.4f}, "
        f"exact {tv_exact:.5f}")
  assert tv_empirical < TV_EMPIRICAL_MAX
  assert tv_exact < TV_EXACT_MAX
  # The learned log Z (TB) or log F(s0) (the others) is the log partition function.
  log_z = float(np.mean(np.asarray(metrics["log_z"][-50:])))
  true_log_z = float(np.log(np.sum(np.asarray(env.reward(jnp.asarray(env.all_positions()))))))
  assert log_z == pytest.approx(true_log_z, abs=0.05)


def test_conditional_tb_learns_log_z_and_target_per_condition():
  env = TemperedGrid(ndim=2, height=8)
  config = T.TrainConfig(env=env, loss="tb", hidden=HIDDEN, batch=64, num_steps=1500,
                         epsilon=0.05, cond_fn=_draw_beta)
  params, metrics = T.train(jax.random.PRNGKey(0), config)
  assert np.all(np.isfinite(np.asarray(metrics["loss"])))
  model = T.make_model(env, "tb", HIDDEN)
  reward = np.asarray(env.reward(jnp.asarray(env.all_positions()))).astype(np.float64)
  for beta in BETAS:
    target = reward ** beta / np.sum(reward ** beta)
    cond = jnp.asarray(beta, jnp.float32)
    tv = total_variation(target, env.policy_distribution(model.apply, params, cond).ravel())
    log_z = float(model.apply(params, env.cond_features(cond)[None], method=model.log_z)[0])
    print(f"conditional TB beta={beta}: exact TV {tv:.5f}, log Z {log_z:.4f} "
          f"(true {np.log(np.sum(reward ** beta)):.4f})")
    assert tv < TV_EXACT_MAX
    assert log_z == pytest.approx(np.log(np.sum(reward ** beta)), abs=0.05)

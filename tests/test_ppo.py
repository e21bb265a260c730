"""The PPO building blocks: GAE against a direct loop, masks, and a bandit that PPO solves."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gfnfeeds.training import ppo


def test_gae_matches_direct_recursion():
  rng = np.random.default_rng(0)
  t, b, gamma, lam = 7, 3, 0.9, 0.8
  rewards = rng.normal(size=(t, b)).astype(np.float32)
  values = rng.normal(size=(t, b)).astype(np.float32)
  dones = rng.random((t, b)) < 0.3
  last = rng.normal(size=(b,)).astype(np.float32)
  adv, ret = ppo.generalized_advantages(jnp.asarray(rewards), jnp.asarray(values),
                                        jnp.asarray(dones), jnp.asarray(last), gamma, lam)
  expected = np.zeros((t, b), np.float32)
  next_adv, next_value = np.zeros(b), last
  for i in reversed(range(t)):
    nd = 1.0 - dones[i]
    delta = rewards[i] + gamma * next_value * nd - values[i]
    next_adv = delta + gamma * lam * nd * next_adv
    expected[i] = next_adv
    next_value = values[i]
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, expected + values, rtol=1e-5, atol=1e-5)


def test_masked_actions_have_zero_probability_and_no_entropy():
  logits = jnp.array([[3.0, 1.0, 2.0, 0.5]])
  mask = jnp.array([[True, False, True, False]])
  masked = ppo.masked_logits(logits, mask)
  probs = jax.nn.softmax(masked)
  assert float(probs[0, 1]) == 0.0 and float(probs[0, 3]) == 0.0
  ent = ppo.categorical_entropy(masked, mask)
  p = np.exp([3.0, 2.0]) / np.exp([3.0, 2.0]).sum()
  np.testing.assert_allclose(ent, [-(p * np.log(p)).sum()], rtol=1e-5)
  assert np.isfinite(jax.grad(lambda l: ppo.categorical_entropy(ppo.masked_logits(l, mask),
                                                                mask).sum())(logits)).all()


def test_ppo_updates_solve_a_masked_bandit():
  # Arm 2 pays most but is masked; arm 3 is the best valid arm.
  payoff = jnp.array([0.1, 0.3, 1.0, 0.6])
  mask = jnp.array([True, True, False, True])
  optimizer = optax.adam(0.05)
  params = jnp.zeros(4)
  opt_state = optimizer.init(params)

  def loss_fn(p, mb):
    logits = ppo.masked_logits(p, mask)
    logp = ppo.categorical_log_prob(jnp.broadcast_to(logits, (mb["a"].shape[0], 4)), mb["a"])
    return ppo.clipped_surrogate_loss(logp, mb["logp"], mb["adv"], 0.2), {}

  @jax.jit
  def update(params, opt_state, key):
    k1, k2 = jax.random.split(key)
    logits = ppo.masked_logits(params, mask)
    a = jax.random.categorical(k1, logits, shape=(64,))
    batch = {"a": a, "logp": ppo.categorical_log_prob(jnp.broadcast_to(logits, (64, 4)), a),
             "adv": payoff[a]}
    return ppo.minibatch_epochs(params, opt_state, batch, k2, loss_fn, optimizer, 2, 4)

  key = jax.random.PRNGKey(0)
  for _ in range(60):
    key, sub = jax.random.split(key)
    params, opt_state, metrics = update(params, opt_state, sub)
  probs = jax.nn.softmax(ppo.masked_logits(params, mask))
  assert float(probs[2]) == 0.0
  assert float(probs[3]) > 0.8, probs
  assert np.isfinite(float(metrics["loss"]))

"""Proximal policy optimisation as small pure functions (shared by DAM and Incendio's MAPPO).

Everything here is jittable and shape-static: advantages by a reversed `lax.scan`,
the clipped surrogate as a function of log-probabilities, and the epoch/minibatch
loop as nested scans over a permuted batch, so one PPO update is one fused
computation (PureJaxRL style). Masked categorical helpers keep invalid actions at
probability exactly zero.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# Large negative instead of -inf: keeps softmax, log-softmax and their gradients finite.
MASKED_LOGIT = -1e9


def masked_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Logits with invalid actions (mask False) pushed to MASKED_LOGIT."""
  return jnp.where(mask, logits, MASKED_LOGIT)


def categorical_log_prob(logits: jax.Array, action: jax.Array) -> jax.Array:
  """log pi(action) under categorical `logits` [..., A] (already masked)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def categorical_entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Entropy of categorical `logits` [..., A], counting only valid actions."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  terms = jnp.exp(logp) * logp
  if mask is not None:
    terms = jnp.where(mask, terms, 0.0)
  return -jnp.sum(terms, axis=-1)


def generalized_advantages(rewards: jax.Array, values: jax.Array, dones: jax.Array,
                           last_value: jax.Array, gamma: float,
                           lam: float) -> tuple[jax.Array, jax.Array]:
  """GAE(gamma, lambda) over a time-major rollout.

  Args:
    rewards, values, dones: [T, ...]; `dones[t]` is True when the step t ended the
      episode (the value after it is then not bootstrapped).
    last_value: [...] value of the state after the last step.
    gamma, lam: discount and GAE lambda.

  Returns:
    (advantages, returns), both [T, ...]; returns = advantages + values.
  """

  def backward(carry, xs):
    next_adv, next_value = carry
    reward, value, done = xs
    not_done = 1.0 - done.astype(rewards.dtype)
    delta = reward + gamma * next_value * not_done - value
    adv = delta + gamma * lam * not_done * next_adv
    return (adv, value), adv

  init = (jnp.zeros_like(last_value), last_value)
  _, adv = jax.lax.scan(backward, init, (rewards, values, dones), reverse=True)
  return adv, adv + values


def clipped_surrogate_loss(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array,
                           clip_eps: float, normalize: bool = True) -> jax.Array:
  """PPO's clipped policy objective, as a loss to minimise (mean over the batch)."""
  if normalize:
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
  ratio = jnp.exp(log_prob - old_log_prob)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  return -jnp.mean(jnp.minimum(unclipped, clipped))


def clipped_value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array,
                       clip_eps: float) -> jax.Array:
  """PPO's clipped value regression (half mean squared error, pessimistic of the two)."""
  clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
  return 0.5 * jnp.mean(jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2))


def minibatch_epochs(params: Any, opt_state: Any, batch: Any, key: jax.Array,
                     loss_fn: Callable[[Any, Any], tuple[jax.Array, dict]],
                     optimizer: optax.GradientTransformation, num_epochs: int,
                     num_minibatches: int) -> tuple[Any, Any, dict]:
  """`num_epochs` passes of minibatch gradient steps over `batch`, as nested scans.

  Args:
    params, opt_state: what the optimizer updates.
    batch: pytree whose leaves share a leading axis N (divisible by num_minibatches).
    key: permutation randomness (one permutation per epoch).
    loss_fn: `(params, minibatch) -> (loss, metrics dict of scalars)`.
    optimizer: the optax transformation that made opt_state.
    num_epochs, num_minibatches: static loop sizes.

  Returns:
    (params, opt_state, metrics averaged over every minibatch step).
  """
  n = jax.tree.leaves(batch)[0].shape[0]
  if n % num_minibatches:
    raise ValueError(f"batch of {n} samples does not split into {num_minibatches} minibatches")
  size = n // num_minibatches
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(carry, minibatch):
    p, o = carry
    (loss, metrics), grads = grad_fn(p, minibatch)
    updates, o = optimizer.update(grads, o, p)
    p = optax.apply_updates(p, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
    return (p, o), metrics

  def epoch(carry, epoch_key):
    perm = jax.random.permutation(epoch_key, n)
    shuffled = jax.tree.map(
        lambda x: jnp.take(x, perm, axis=0).reshape((num_minibatches, size) + x.shape[1:]), batch)
    return jax.lax.scan(step, carry, shuffled)

  (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state),
                                              jax.random.split(key, num_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, metrics)

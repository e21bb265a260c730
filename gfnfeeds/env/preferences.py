"""User preference weights w = (alpha, beta, gamma, theta) and their sampler.

The objective of a session is score_w = alpha * quality - beta * rebuffering
- gamma * smoothness - theta * megabits (quality and smoothness in Mbps(-s),
rebuffering in s, theta per megabit downloaded).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

MMGC_WEIGHTS = (1.0, 1.85, 1.0, 0.5)
WEIGHT_NAMES = ("alpha", "beta", "gamma", "theta")

# Archetypes of SYSTEM.md section 3; centres chosen inside the required ranges.
ARCHETYPES = {
    "quality_seeker": (1.4, 1.0, 0.8, 0.15),
    "stall_averse": (1.0, 4.5, 1.0, 0.4),
    "data_saver": (0.7, 1.5, 0.5, 1.2),
    "balanced": MMGC_WEIGHTS,
}
WEIGHT_LOW = (0.5, 0.5, 0.0, 0.0)
WEIGHT_HIGH = (1.5, 6.0, 2.0, 1.5)


@struct.dataclass
class PreferenceSampler:
  """A mixture of archetypes with multiplicative log-normal jitter, clipped to bounds.

  A single archetype with zero jitter is a fixed preference.

  Attributes:
    means: float64 [A, 4] archetype centres.
    probs: float64 [A] mixture weights (sum to 1).
    jitter: float64 [4] std of log-normal multiplicative noise per weight.
    low, high: float64 [4] clip bounds.
  """

  means: jnp.ndarray
  probs: jnp.ndarray
  jitter: jnp.ndarray
  low: jnp.ndarray
  high: jnp.ndarray

  NUM_UNIFORMS = 5

  def sample(self, key: jax.Array) -> jax.Array:
    """Draws one weight vector [4]."""
    return self.from_uniforms(jax.random.uniform(key, (self.NUM_UNIFORMS,), jnp.float64))

  def from_uniforms(self, u: jax.Array) -> jax.Array:
    """One weight vector from 5 uniforms in [0, 1): archetype, then 4 normals (Box-Muller)."""
    arch = jnp.minimum(jnp.sum(jnp.cumsum(self.probs) <= u[0]), self.means.shape[0] - 1)
    radius = jnp.sqrt(-2.0 * jnp.log1p(-u[1:3]))  # 1 - u in (0, 1]
    angle = 2.0 * jnp.pi * u[3:5]
    noise = jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])
    w = self.means[arch] * jnp.exp(self.jitter * noise)
    return jnp.clip(w, self.low, self.high)


def fixed_preferences(weights=MMGC_WEIGHTS) -> PreferenceSampler:
  """Everyone gets `weights` (default: the MMGC weights 1, 1.85, 1, 0.5)."""
  w = np.asarray(weights, np.float64).reshape(1, 4)
  return PreferenceSampler(means=jnp.asarray(w), probs=jnp.ones((1,), jnp.float64),
                           jitter=jnp.zeros((4,), jnp.float64),
                           low=jnp.asarray(w[0]), high=jnp.asarray(w[0]))


def archetype_preferences(jitter: float = 0.25, probs=None) -> PreferenceSampler:
  """The four-archetype mixture (quality seeker, stall-averse, data saver, balanced)."""
  means = np.asarray(list(ARCHETYPES.values()), np.float64)
  p = np.full((len(means),), 1.0 / len(means)) if probs is None else np.asarray(probs, np.float64)
  if p.shape != (len(means),) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
    raise ValueError(f"archetype_preferences: probs must be {len(means)} non-negative numbers "
                     f"summing to 1, got {probs}")
  return PreferenceSampler(means=jnp.asarray(means), probs=jnp.asarray(p),
                           jitter=jnp.full((4,), float(jitter), jnp.float64),
                           low=jnp.asarray(WEIGHT_LOW, jnp.float64),
                           high=jnp.asarray(WEIGHT_HIGH, jnp.float64))

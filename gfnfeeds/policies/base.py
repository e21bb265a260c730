"""The interface shared by every controller in gfnfeeds.

A policy is a hashable (static) object with two pure methods. It sees only the
Observation and the client-visible Catalog, never the World, and carries what it
remembers between decisions (a throughput estimator, an RNN state, ...) in a
pytree `policy_state` that the rollout threads through and re-initialises when
a session starts. Policies are jittable and vmappable over sessions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gfnfeeds.data.packing import Catalog
from gfnfeeds.env.feeds import Action, Observation
from gfnfeeds.numerics import prefix_count

PolicyState = Any


@dataclasses.dataclass(frozen=True)
class Policy:
  """Base class. Subclasses are frozen dataclasses (hashable, so jit can treat them as static)."""

  def init(self, obs: Observation, catalog: Catalog) -> PolicyState:
    """The policy state at the start of a session (default: none)."""
    del obs, catalog
    return ()

  def act(self, key: jax.Array, policy_state: PolicyState, obs: Observation,
          catalog: Catalog) -> tuple[Action, PolicyState]:
    raise NotImplementedError

  def bind(self, policy_params) -> "Policy":
    """This policy with its learned parameters (a pytree) attached.

    Rollouts call it inside jitted code with parameters passed as arguments, so
    weights are never closed over. Rule-based policies have none: `()`.
    """
    del policy_params
    return self

  @property
  def name(self) -> str:
    return type(self).__name__


@dataclasses.dataclass(frozen=True)
class RandomValidPolicy(Policy):
  """Uniform over the valid discrete actions (the mask): a trivial policy for benchmarks."""

  env: Any = None  # the FeedsEnv that defines the discrete action set

  def act(self, key, policy_state, obs, catalog):
    del catalog
    # One uniform picks the r-th valid action: far cheaper than a Gumbel categorical.
    mask = obs.action_mask
    count = jnp.sum(mask)
    r = jnp.minimum(jnp.floor(jax.random.uniform(key, (), jnp.float64) * count), count - 1)
    # The r-th valid index is the number of positions whose running count is still <= r
    # (a sum: cheaper under vmap than an argmax).
    index = jnp.sum(prefix_count(mask) <= r).astype(jnp.int32)
    return self.env.action_from_index(index), policy_state


@dataclasses.dataclass(frozen=True)
class ClairvoyantPolicy(Policy):
  """A policy that reads the hidden World: the declared exception of SYSTEM.md section 2.

  Only upper-bound references (the clairvoyant oracle) subclass it. The session
  evaluator (`gfnfeeds.env.rollout.make_session_evaluator`) recognises the
  `clairvoyant` marker and calls `init_clairvoyant` / `act_clairvoyant` with
  the true environment state and EnvParams (World included) and the evaluator's
  decision limit, instead of `init` / `act`. `act` itself refuses to run.
  """

  clairvoyant = True  # class attribute, not a field

  def init_clairvoyant(self, key: jax.Array, obs: Observation, state, params,
                       limit: int) -> PolicyState:
    raise NotImplementedError

  def act_clairvoyant(self, key: jax.Array, policy_state: PolicyState, obs: Observation,
                      state, params, limit: int) -> tuple[Action, PolicyState]:
    raise NotImplementedError

  def act(self, key, policy_state, obs, catalog):
    raise TypeError(f"{self.name} reads the World: run it with "
                    f"gfnfeeds.env.rollout.make_session_evaluator (gfnfeeds.evaluation."
                    f"run_sessions), which passes the true state; it has no Observation-only act")

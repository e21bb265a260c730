"""Random-shooting MPC: the GFlowNet controller's planner with uniformly random plans.

The reference that shows what the learned plan sampler adds (SYSTEM.md section 7).
Per decision it draws K plans of H tokens of the environment's discrete action
set uniformly at random among the VALID plans' tokens (each token uniform over
the tokens the plan DAG allows after the prefix: the same masks as the GFlowNet's
`PlanDAG`, so downloads stop when a video has no chunks left in the plan), scores
them with the GFlowNet controller's own belief model and selector
(`gfnfeeds.policies.gfn.select_plan`: M belief scenarios built from the
Observation and the Catalog only, FeedsEnv's own step, U_w = w . components) and
executes the first token of the best plan. Its defaults are the GFlowNet controller's
(experiments/configs/gfn.py: K=10, H=2, M=16 scenarios with the non-clairvoyant swipe in
the continuation, no plan opening with a sleep while stalled), so that the learned
sampler is the only difference; personalized: w is the user's (obs.weights).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.planning import belief as belief_lib
from gfnfeeds.policies.base import Policy
from gfnfeeds.policies.gfn import PlanDAG, opening_sleep_ok, remaining_chunks, select_plan


def plan_dag(env: FeedsEnv, horizon: int) -> PlanDAG:
  """The GFlowNet controller's plan DAG over `env`'s discrete action set (no features)."""
  return PlanDAG(horizon=horizon, window=env.window, levels=env.num_levels_hint,
                 num_sleeps=len(env.sleep_choices_ms), cond_dim=0)


def uniform_valid_plans(key: jax.Array, dag: PlanDAG, remaining: jax.Array,
                        num: int, sleep_ok=True) -> jax.Array:
  """int32 [num, H]: plans whose every token is uniform over the DAG's valid next tokens.

  Args:
    key: PRNG key.
    dag: the plan DAG (its forward mask defines validity).
    remaining: int32 [W] chunks left per window slot (`remaining_chunks(obs)`).
    num: K, the number of plans.
    sleep_ok: bool, may a plan open with a sleep (`opening_sleep_ok`).
  """
  cond = {"features": jnp.zeros((0,), jnp.float32), "remaining": remaining,
          "sleep_ok": jnp.asarray(sleep_ok, bool)}

  def one(k):
    def body(state, kk):
      mask = dag.forward_mask(state, cond)[:dag.num_tokens]  # the exit is never open before H
      token = jax.random.categorical(kk, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
      return dag.step(state, token, cond), token

    _, tokens = jax.lax.scan(body, dag.init(cond), jax.random.split(k, dag.horizon))
    return tokens

  return jax.vmap(one)(jax.random.split(key, num))


@dataclasses.dataclass(frozen=True)
class RandomShootingMPC(Policy):
  """K uniformly random valid plans of H decisions, scored by the belief model, argmax.

  Attributes:
    env: the FeedsEnv whose discrete action set the plans use.
    horizon: H, decisions per plan.
    num_candidates: K plans per decision.
    belief: the belief model's settings (M = belief.num_scenarios), the GFlowNet's defaults.
    sleep_while_stalled: True lets a plan open with a sleep while the playing video is
      stalled with chunks left (a dominated action the GFlowNet controller masks too).
  """

  env: FeedsEnv = FeedsEnv()
  horizon: int = 2
  num_candidates: int = 10
  # experiments/configs/gfn.py's belief (a test keeps them equal).
  belief: belief_lib.BeliefConfig = belief_lib.BeliefConfig(num_scenarios=16,
                                                            swipe_in_flight=True)
  sleep_while_stalled: bool = False

  def __post_init__(self):
    if self.horizon < 1 or self.num_candidates < 1:
      raise ValueError(f"RandomShootingMPC: horizon and num_candidates must be >= 1, got "
                       f"{self.horizon} and {self.num_candidates}")

  def decide(self, key, obs, catalog):
    """(action index int32, plans int32 [K, H], utilities float64 [K]) of one decision."""
    k_plan, k_belief = jax.random.split(key)
    weights = jnp.asarray(obs.weights, jnp.float64)
    plans = uniform_valid_plans(k_plan, plan_dag(self.env, self.horizon),
                                remaining_chunks(obs), self.num_candidates,
                                opening_sleep_ok(obs, self.sleep_while_stalled))
    _, utilities, best = select_plan(k_belief, self.env, obs, catalog, plans, weights,
                                     self.belief)
    return plans[best, 0], plans, utilities

  def act(self, key, policy_state, obs, catalog):
    index, _, _ = self.decide(key, obs, catalog)
    return self.env.action_from_index(index), policy_state

  @property
  def name(self) -> str:
    return "random_shooting"

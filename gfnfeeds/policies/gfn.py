"""The preference-conditioned GFlowNet controller (SYSTEM.md section 6).

Per decision:
  1. the observation and the user's w become the conditioning of a plan DAG;
  2. the Flax policy (gfnfeeds.gfn.networks.MLPPolicy) samples K plans of H
     tokens of the environment's discrete action set (`sample_trajectories`);
  3. the belief model (gfnfeeds.planning.belief) executes every plan in the same
     M scenarios with FeedsEnv's own step function, giving outcome components;
  4. the jitted argmax selector executes the first token of the plan with the
     highest U_w = w . components. K = 1 is the single-candidate (SC) variant:
     the sample is executed, nothing is scored.
With `condition="mmgc"` (the fixed-preference variant) steps 1-4 use the MMGC
weights whatever the user's are; the environment still scores the user's w.

The plan DAG is the prefix tree of the plan: every state has one parent, so
P_B = 1 and TB, DB, SubTB and FM all apply. After H tokens only the exit is
allowed (fixed-length plans). A download token is valid while the video has
chunks left after the downloads already in the plan; sleeps are valid except
as the first token while the playing video is stalled with chunks left
(`sleep_allowed`: a dominated action; `sleep_while_stalled=True` lifts it), so
the first token's mask is the observation's action mask less those sleeps.

The controller is a frozen dataclass (static: hashable, a jit static argument)
holding only settings; the network weights are bound with `bind(params)` inside
jitted code, so they are passed as arguments, never closed over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import struct

from gfnfeeds.data.packing import Catalog
from gfnfeeds.env.feeds import CHUNK_MS, FeedsEnv, Observation
from gfnfeeds.env.preferences import MMGC_WEIGHTS, WEIGHT_HIGH
from gfnfeeds.gfn.dag import DAGEnv
from gfnfeeds.gfn.networks import MLPPolicy, PolicyOutput
from gfnfeeds.gfn.sampling import Trajectories, exploration_log_probs, sample_trajectories
from gfnfeeds.numerics import top_k
from gfnfeeds.planning import belief as belief_lib
from gfnfeeds.policies.base import Policy

F32 = jnp.float32
CONDITIONS = ("user", "mmgc")
CANDIDATE_MODES = ("iid", "distinct", "distinct_beam")
MAX_ENUMERATED_PLANS = 4096  # num_tokens ** horizon above this: "distinct" is refused


@struct.dataclass
class PlanState:
  """tokens: int32 [H] (-1 = not chosen yet); length: int32; planned: int32 [W] downloads
  per window slot so far; done: bool (exited)."""

  tokens: jax.Array
  length: jax.Array
  planned: jax.Array
  done: jax.Array


@dataclasses.dataclass(frozen=True)
class PlanDAG(DAGEnv):
  """Plans of `horizon` tokens over a discrete action set of `window` x `levels` downloads
  and `num_sleeps` sleeps, conditioned on cond = {"features": float32 [F], "remaining":
  int32 [W] chunks left per window slot (0 for empty slots)}.

  The plan's reward needs the Catalog and the belief scenarios that all candidates
  of a decision share, so it is computed for the whole batch by `score_candidates`
  and attached with `gfnfeeds.gfn.replay.with_log_rewards`; `log_reward` here is
  the neutral log R = 0.
  """

  horizon: int = 3
  window: int = 5
  levels: int = 3
  num_sleeps: int = 1
  cond_dim: int = 0

  @property
  def num_tokens(self) -> int:
    return self.window * self.levels + self.num_sleeps

  @property
  def max_length(self) -> int:
    return self.horizon + 1

  @property
  def num_actions(self) -> int:
    return self.num_tokens + 1

  @property
  def num_backward_actions(self) -> int:
    return 1

  @property
  def feature_dim(self) -> int:
    return self.horizon * self.num_tokens + self.horizon + 1

  def init(self, cond):
    return PlanState(tokens=jnp.full((self.horizon,), -1, jnp.int32),
                     length=jnp.zeros((), jnp.int32),
                     planned=jnp.zeros((self.window,), jnp.int32), done=jnp.asarray(False))

  def forward_mask(self, state, cond):
    left = cond["remaining"] - state.planned > 0
    # A plan may not open with a sleep where the decision's `sleep_ok` is False
    # (`sleep_allowed`: the playing video is stalled with chunks left to fetch).
    sleep_ok = jnp.logical_or(state.length > 0, cond.get("sleep_ok", True))
    tokens = jnp.concatenate([jnp.repeat(left, self.levels),
                              jnp.broadcast_to(sleep_ok, (self.num_sleeps,))])
    open_ = state.length < self.horizon
    return jnp.concatenate([jnp.logical_and(tokens, open_), jnp.logical_not(open_)[None]])

  def backward_mask(self, state, cond):
    return (state.length > 0)[None]

  def step(self, state, action, cond):
    is_exit = action == self.exit_action
    is_download = action < self.window * self.levels
    slot = action // self.levels
    hit = (jnp.arange(self.window) == slot) & is_download & ~is_exit
    at = jnp.arange(self.horizon) == state.length
    tokens = jnp.where(at & ~is_exit, action, state.tokens)
    return PlanState(tokens=tokens, length=state.length + (~is_exit).astype(jnp.int32),
                     planned=state.planned + hit.astype(jnp.int32), done=is_exit)

  def backward_action(self, state, action, cond):
    return jnp.zeros((), jnp.int32)

  def is_terminal(self, state):
    return state.done

  def log_reward(self, state, cond):
    return jnp.zeros((), F32)

  def featurize(self, state, cond):
    onehot = jax.nn.one_hot(state.tokens, self.num_tokens, dtype=F32)  # -1 -> zeros
    return jnp.concatenate([onehot.reshape(-1), jax.nn.one_hot(state.length, self.horizon + 1,
                                                                dtype=F32)])

  def cond_features(self, cond):
    return cond["features"].astype(F32)

  def backward_step(self, state, backward_action, cond):
    last = state.length - 1
    token = state.tokens[jnp.maximum(last, 0)]
    is_download = token < self.window * self.levels
    hit = (jnp.arange(self.window) == token // self.levels) & is_download
    return PlanState(tokens=jnp.where(jnp.arange(self.horizon) == last, -1, state.tokens),
                     length=last, planned=state.planned - hit.astype(jnp.int32),
                     done=jnp.asarray(False))

  def forward_action(self, state, backward_action, cond):
    return state.tokens[jnp.maximum(state.length - 1, 0)]


def _token_log_probs(dag: PlanDAG, apply_fn, params, states, cond, epsilon,
                     temperature) -> jax.Array:
  """float32 [n, T]: the exploring sampler's next-token log-probs at n plan prefixes `states`."""
  cond_features = dag.cond_features(cond)[None]
  n = jax.tree.leaves(states)[0].shape[0]
  features = jax.vmap(dag.featurize, in_axes=(0, None))(states, cond)
  out = apply_fn(params, features, jnp.broadcast_to(cond_features, (n,) + cond_features.shape[1:]))
  mask = jax.vmap(dag.forward_mask, in_axes=(0, None))(states, cond)
  return exploration_log_probs(out.forward_logits, mask, epsilon, temperature)[:, :dag.num_tokens]


def enumerate_plan_log_probs(dag: PlanDAG, apply_fn, params, cond, epsilon=0.0,
                             temperature=1.0) -> tuple[jax.Array, jax.Array]:
  """The exact distribution of the sampler over all num_tokens ** horizon plans of one decision.

  The plan DAG is a prefix tree of fixed depth, so every plan's probability is the
  product of its H token probabilities. The network runs once on every prefix of
  length < H (1 + T + ... + T^(H-1) rows; 17 for H = 2 and 16 tokens, against
  K (H + 1) rows for K ancestral samples) and the product is formed for all plans.

  Args:
    dag: the plan DAG.
    apply_fn: the policy network's apply (params, features, cond_features) -> PolicyOutput.
    cond: one decision's conditioning (no batch axis).
    epsilon, temperature: the sampler's exploration (as `sample_trajectories`).

  Returns:
    (log_probs float32 [T^H] of the exploring sampler, -inf for plans the masks forbid;
     plans int32 [T^H, H], plan i = the base-T digits of i, first token most significant).
  """
  t, h = dag.num_tokens, dag.horizon
  states = jax.tree.map(lambda x: x[None], dag.init(cond))
  log_probs = jnp.zeros((1,), F32)
  tokens = jnp.arange(t, dtype=jnp.int32)
  for _ in range(h):  # static depth: H levels of the prefix tree
    n = log_probs.shape[0]
    step_lp = _token_log_probs(dag, apply_fn, params, states, cond, epsilon, temperature)
    log_probs = (log_probs[:, None] + step_lp).reshape(-1)
    states = jax.vmap(lambda s: jax.vmap(lambda a: dag.step(s, a, cond))(tokens))(states)
    states = jax.tree.map(lambda x: x.reshape((n * t,) + x.shape[2:]), states)
  index = jnp.arange(t ** h, dtype=jnp.int32)
  plans = jnp.stack([(index // t ** (h - 1 - d)) % t for d in range(h)], axis=1)
  return log_probs, plans


def sample_distinct_plans(key: jax.Array, log_probs: jax.Array, plans: jax.Array,
                          num: int) -> jax.Array:
  """`num` plans drawn WITHOUT replacement from exp(log_probs) (Gumbel-top-k), int32 [num, H].

  Where fewer than `num` plans are allowed, the remaining rows repeat the first draw.
  """
  perturbed = log_probs + jax.random.gumbel(key, log_probs.shape, F32)
  values, index = top_k(perturbed, num)
  index = jnp.where(jnp.isfinite(values), index, index[0])
  return plans[index]


def prefix_tree_policy_fn(apply_fn, horizon: int, group_size: int, final_rows: bool):
  """`apply_fn` for `replay_trajectories` on groups of plans that share their root.

  The training replay teacher-forces B = G x `group_size` plans of H tokens plus the
  exit (T = H + 1 steps), where each consecutive group of `group_size` plans has
  the same conditioning (one decision, one w), hence the same state s_0. Of the
  B x T states the replay asks for, the network needs
    - s_0 once per group (all `group_size` copies are the same row);
    - s_1 .. s_{H-1} of every plan;
    - s_H (only the exit is allowed there, so log P_F(exit) = 0 whatever the logits)
      only when `final_rows`, i.e. when a loss reads log F(s_H) (DB, SubTB, FM).
  The returned function runs those rows (G (1 + group_size (H - 1)) for TB: 11
  per group instead of 30 for H = 2, K = 10) and lays the outputs out as B x T
  rows, zeros for the skipped s_H rows; losses and their gradients are the same
  as with `apply_fn` on every row, up to float rounding.
  """
  steps = horizon + 1

  def policy_fn(params, features, cond_features):
    rows = features.shape[0]
    groups = rows // (group_size * steps)
    if groups * group_size * steps != rows:
      raise ValueError(f"prefix_tree_policy_fn: {rows} rows are not groups of {group_size} "
                       f"plans x {steps} steps")
    feats = features.reshape(groups, group_size, steps, -1)
    conds = cond_features.reshape(groups, group_size, steps, -1)
    last = steps if final_rows else horizon
    inner_f = feats[:, :, 1:last].reshape(-1, feats.shape[-1])
    inner_c = conds[:, :, 1:last].reshape(-1, conds.shape[-1])
    out = apply_fn(params, jnp.concatenate([feats[:, 0, 0], inner_f]),
                   jnp.concatenate([conds[:, 0, 0], inner_c]))

    def layout(x):  # [G + G * group_size * (last - 1), ...] -> [rows, ...]
      if x is None:
        return None
      root = jnp.broadcast_to(x[:groups, None, None], (groups, group_size, 1) + x.shape[1:])
      inner = x[groups:].reshape((groups, group_size, last - 1) + x.shape[1:])
      skipped = jnp.zeros((groups, group_size, steps - last) + x.shape[1:], x.dtype)
      return jnp.concatenate([root, inner, skipped], axis=2).reshape((rows,) + x.shape[1:])

    return PolicyOutput(forward_logits=layout(out.forward_logits),
                        backward_logits=layout(out.backward_logits),
                        log_flow=layout(out.log_flow))

  return policy_fn


def _truncated_gumbel(perturbed: jax.Array, top: jax.Array) -> jax.Array:
  """Gumbels `perturbed` [..., T] shifted so that their maximum is `top` [...] (-inf stays).

  -log(exp(-top) - exp(-max) + exp(-g)) in the stable form of Kool et al. (2019),
  appendix B: v = top - g + log(1 - exp(g - max)), result top - max(v, 0) -
  log1p(exp(-|v|)).
  """
  z = jnp.max(perturbed, axis=-1, keepdims=True)
  top = top[..., None]
  finite = jnp.isfinite(perturbed) & jnp.isfinite(top)
  g = jnp.where(finite, perturbed, 0.0)
  gap = jnp.where(finite, g - z, -1.0)  # <= 0
  # log(1 - exp(gap)); -inf at the maximum (gap 0), whose result is then exactly `top`.
  log1mexp = jnp.where(gap > -0.693, jnp.log(-jnp.expm1(gap)), jnp.log1p(-jnp.exp(gap)))
  v = top - g + log1mexp
  shifted = top - jnp.maximum(v, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(v)))
  return jnp.where(finite, shifted, -jnp.inf)


def sample_distinct_plans_beam(key: jax.Array, dag: PlanDAG, apply_fn, params, cond, num: int,
                               epsilon=0.0, temperature=1.0) -> jax.Array:
  """`num` plans drawn WITHOUT replacement from the sampler (stochastic beam search), [num, H].

  The same distribution as `enumerate_plan_log_probs` + `sample_distinct_plans`
  (exactly: Gumbel-top-k of the plans' perturbed log-probabilities), but the
  perturbations are drawn top-down on the prefix tree (Kool, van Hoof and Welling,
  2019): a child's Gumbel is conditioned on its parent's being the maximum of its
  subtree, so only the `num` best prefixes of each depth can hold a selected plan
  and only they are expanded. The network runs on 1 + num (H - 1) rows (21 for
  H = 3, K = 10) instead of the 1 + T + ... + T^(H-1) of the enumeration (273), so
  any horizon is affordable. Plans come out in decreasing perturbed value; where
  fewer than `num` plans are allowed, the remaining rows repeat the first draw.
  """
  t, h = dag.num_tokens, dag.horizon
  states = jax.tree.map(lambda x: x[None], dag.init(cond))
  log_probs = jnp.zeros((1,), F32)
  top = jax.random.gumbel(jax.random.fold_in(key, h), (1,), F32)  # the root: max of all plans
  for depth in range(h):  # static: H levels of the prefix tree, beam <= num
    n = log_probs.shape[0]
    step_lp = _token_log_probs(dag, apply_fn, params, states, cond, epsilon, temperature)
    child_lp = jnp.where(jnp.isfinite(log_probs)[:, None], log_probs[:, None] + step_lp,
                         -jnp.inf)  # [n, T]
    # Gumbels are finite, so disallowed children (log-prob -inf) stay -inf.
    perturbed = child_lp + jax.random.gumbel(jax.random.fold_in(key, depth), (n, t), F32)
    child_top = _truncated_gumbel(perturbed, top)
    width = min(num, n * t)
    top, index = jax.lax.top_k(child_top.reshape(-1), width)
    parent, token = index // t, (index % t).astype(jnp.int32)
    log_probs = jnp.where(jnp.isfinite(top), child_lp.reshape(-1)[index], -jnp.inf)
    parents = jax.tree.map(lambda x: x[parent], states)
    states = jax.vmap(lambda s, a: dag.step(s, a, cond))(parents, token)
  plans = states.tokens
  first = jnp.where(jnp.isfinite(top), jnp.arange(plans.shape[0]), 0)
  plans = plans[first]
  if plans.shape[0] < num:  # fewer plans exist than num: repeat the first draw
    plans = jnp.concatenate([plans, jnp.broadcast_to(plans[:1], (num - plans.shape[0], h))])
  return plans


# ----------------------------------------------------------------- features
WEIGHT_SCALE = WEIGHT_HIGH  # w / upper bound of the sampler's range: inputs in [0, 1]


def weight_features(weights) -> jax.Array:
  """float32 [4]: the preference vector, scaled to about [0, 1]."""
  return (jnp.asarray(weights, jnp.float64) / jnp.asarray(WEIGHT_SCALE)).astype(F32)


def observation_features(obs: Observation, catalog: Catalog,
                         config: belief_lib.BeliefConfig) -> jax.Array:
  """float32 [F]: the network's view of one observation (w excluded; see `weight_features`).

  Per window slot: validity, buffer and play position (s), downloaded fraction,
  chunks left, last level (one-hot with "none"), next chunk megabits per level,
  and the retention-derived chances that the user watches the next three chunks
  given the current position. Global: log belief bandwidth centre and spread,
  history fill, last stall, first step.
  """
  valid = obs.slot_valid
  vf = valid.astype(jnp.float64)
  video = jnp.where(valid, obs.slot_video, 0)
  counter = obs.chunks_downloaded
  n = jnp.maximum(obs.num_chunks, 1)
  ret = catalog.retention[video]  # [W, C+1]
  last = ret.shape[-1] - 1
  k0 = jnp.clip(obs.play_ms // CHUNK_MS, 0, last)
  base = jnp.maximum(jnp.take_along_axis(ret, k0[:, None], axis=1)[:, 0], 1e-6)

  def chance(offset):  # P(watch reaches chunk counter + offset | reached the position)
    k = jnp.clip(counter + offset, 0, last)
    return jnp.clip(jnp.take_along_axis(ret, k[:, None], axis=1)[:, 0] / base, 0.0, 1.0)

  levels = catalog.num_levels
  per_slot = jnp.concatenate([
      vf[:, None],
      (jnp.minimum(obs.buffer_ms, 30_000) / 10_000.0)[:, None],
      (jnp.minimum(obs.play_ms, 120_000) / 30_000.0)[:, None],
      (counter / n)[:, None],
      (jnp.minimum(obs.num_chunks - counter, 60) / 20.0)[:, None],
      jax.nn.one_hot(obs.last_level + 1, levels + 1, dtype=jnp.float64),
      obs.next_chunk_bytes * 8.0 / 1e6 / 2.0,
      jnp.stack([chance(0), chance(1), chance(2)], axis=-1),
  ], axis=-1) * vf[:, None]
  bandwidth = belief_lib.bandwidth_scenarios(obs, config)
  m = bandwidth.shape[0]
  centre = jnp.sqrt(bandwidth[0] * bandwidth[m - 1]) if m > 1 else bandwidth[0]
  spread = jnp.log(bandwidth[m - 1] / bandwidth[0]) / 4.0 if m > 1 else jnp.zeros(())
  glob = jnp.stack([
      jnp.log(jnp.maximum(centre, 1e-3)) / 2.0, spread,
      obs.history_count / obs.tput_history_mbps.shape[-1],
      jnp.minimum(obs.last_rebuf_ms, 5000) / 1000.0,
      obs.first_step.astype(jnp.float64),
      jnp.sum(vf) / vf.shape[0],
  ])
  return jnp.concatenate([per_slot.reshape(-1), glob]).astype(F32)


def observation_feature_dim(env: FeedsEnv) -> int:
  levels = env.num_levels_hint
  return env.window * (4 + 1 + (levels + 1) + levels + 3) + 6


def remaining_chunks(obs: Observation) -> jax.Array:
  """int32 [W]: chunks left to download per window slot (0 for empty slots)."""
  return jnp.where(obs.slot_valid, obs.num_chunks - obs.chunks_downloaded, 0).astype(jnp.int32)


def sleep_allowed(obs: Observation) -> jax.Array:
  """bool: False where the playing video is stalled (empty buffer) with chunks left.

  There a sleep is strictly dominated: the trace cursor does not move during a
  sleep (SIMULATOR.md 5.3) and a stalled player cannot reach the swipe (5.4), so
  the session comes out of it unchanged but for sleep_ms more rebuffering, and
  the same decision comes back. A controller whose scorer rates that sleep no
  worse than a fetch can repeat it until the step limit; masking it rules that out.
  """
  return ~((obs.buffer_ms[0] <= 0) & (remaining_chunks(obs)[0] > 0))


def opening_sleep_ok(obs: Observation, sleep_while_stalled: bool) -> jax.Array:
  """bool: may a plan open with a sleep (`sleep_allowed`, or always with `sleep_while_stalled`)."""
  return jnp.asarray(True) if sleep_while_stalled else sleep_allowed(obs)


def plan_cond(obs_features, weights, remaining, sleep_ok=True) -> dict:
  """The plan DAG's conditioning of one decision (`sleep_ok`: may the plan open with a sleep)."""
  return {"features": jnp.concatenate([obs_features, weight_features(weights)]),
          "remaining": remaining, "sleep_ok": jnp.asarray(sleep_ok, bool)}


def select_plan(key: jax.Array, env: FeedsEnv, obs: Observation, catalog: Catalog,
                plans: jax.Array, weights: jax.Array, config: belief_lib.BeliefConfig
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Scores candidate plans in the belief scenarios and picks the best (the argmax selector).

  Shared by every planner that proposes plans of the discrete action set (the
  GFlowNet controller, random-shooting MPC). Reads the Observation and Catalog only.

  Args:
    key: PRNG key of the belief scenarios (watch draws).
    plans: int32 [K, H] tokens.
    weights: float64 [4] the selection weights w.

  Returns:
    (components float64 [K, 4], utilities float64 [K] = U_w, best int32 = argmax).
  """
  bel = belief_lib.build_belief(key, env, obs, catalog, config)
  components = belief_lib.score_plans(env, bel, plans, catalog, config)
  utilities = belief_lib.utility(components, weights)
  return components, utilities, jnp.argmax(utilities).astype(jnp.int32)


# ----------------------------------------------------------------- the controller
@struct.dataclass
class Decision:
  """Everything one decision produced (for training and diagnostics).

  Attributes:
    action_index: int32, the executed discrete action.
    plans: int32 [K, H] candidate plans (tokens).
    components: float64 [K, 4] belief outcome components (zeros when K = 1).
    utilities: float64 [K] U_w of the candidates under the selection weights.
    best: int32, index of the executed candidate.
    obs_features: float32 [F]; remaining: int32 [W]; sleep_ok: bool; weights:
      float64 [4] used to condition and select.
  """

  action_index: jax.Array
  plans: jax.Array
  components: jax.Array
  utilities: jax.Array
  best: jax.Array
  obs_features: jax.Array
  remaining: jax.Array
  sleep_ok: jax.Array
  weights: jax.Array


@dataclasses.dataclass(frozen=True)
class GFNController(Policy):
  """GFlowNet plan sampler + belief scorer + argmax selector.

  Attributes:
    env: the FeedsEnv whose discrete action set the plans use.
    horizon: H, decisions per plan.
    num_candidates: K (1 = single candidate, no selection).
    belief: the belief model's settings (M = belief.num_scenarios).
    hidden: MLP trunk widths.
    flow_head: the network has a log F head (DB, SubTB, FM checkpoints).
    condition: "user" (the user's w) or "mmgc" (fixed MMGC weights).
    epsilon, temperature: exploration of the plan sampler (0 and 1 when serving).
    candidates: "iid" (K independent ancestral samples) or "distinct" (K different
      plans drawn without replacement from the same distribution, computed exactly
      over all plans by `enumerate_plan_log_probs`; K = 1 is then an exact sample) or
      "distinct_beam" (the same distribution drawn by stochastic beam search,
      `sample_distinct_plans_beam`: 1 + K (H - 1) network rows, any horizon; its
      random draws differ from "distinct"'s for the same key).
    sleep_while_stalled: let plans open with a sleep while the playing video is
      stalled with chunks left (False: masked, `sleep_allowed`; True: the
      behaviour before the mask, kept for the ablation).
    network_params: the Flax parameters (bound with `bind`; not part of the hash).
  """

  env: FeedsEnv = FeedsEnv()
  horizon: int = 3
  num_candidates: int = 10
  belief: belief_lib.BeliefConfig = belief_lib.BeliefConfig()
  hidden: tuple[int, ...] = (256, 256)
  flow_head: bool = False
  condition: str = "user"
  epsilon: float = 0.0
  temperature: float = 1.0
  candidates: str = "iid"
  sleep_while_stalled: bool = False
  network_params: Any = dataclasses.field(default=None, compare=False, hash=False, repr=False)

  def __post_init__(self):
    if self.condition not in CONDITIONS:
      raise ValueError(f"GFNController: condition must be one of {CONDITIONS}, "
                       f"got {self.condition!r}")
    if self.candidates not in CANDIDATE_MODES:
      raise ValueError(f"GFNController: candidates must be one of {CANDIDATE_MODES}, "
                       f"got {self.candidates!r}")
    if self.candidates == "distinct":
      tokens = self.dag.num_tokens
      if tokens ** self.horizon > MAX_ENUMERATED_PLANS:
        raise ValueError(f"GFNController: candidates='distinct' enumerates {tokens}^"
                         f"{self.horizon} plans, more than {MAX_ENUMERATED_PLANS}; use 'iid'")
    if self.horizon < 1 or self.num_candidates < 1:
      raise ValueError(f"GFNController: horizon and num_candidates must be >= 1, got "
                       f"{self.horizon} and {self.num_candidates}")

  # ------------------------------------------------------------- pieces
  @property
  def dag(self) -> PlanDAG:
    return PlanDAG(horizon=self.horizon, window=self.env.window, levels=self.env.num_levels_hint,
                   num_sleeps=len(self.env.sleep_choices_ms),
                   cond_dim=observation_feature_dim(self.env) + 4)

  @property
  def model(self) -> MLPPolicy:
    return MLPPolicy(num_actions=self.dag.num_actions, num_backward_actions=0,
                     hidden=tuple(self.hidden), flow_head=self.flow_head)

  def init_params(self, key: jax.Array):
    """Fresh network parameters (every head, log Z included)."""
    dag = self.dag
    features = jnp.zeros((1, dag.feature_dim), F32)
    cond_features = jnp.zeros((1, dag.cond_dim), F32)
    return self.model.init(key, features, cond_features, method=MLPPolicy.init_all)

  def bind(self, network_params) -> "GFNController":
    return dataclasses.replace(self, network_params=network_params)

  def selection_weights(self, obs: Observation) -> jax.Array:
    if self.condition == "mmgc":
      return jnp.asarray(MMGC_WEIGHTS, jnp.float64)
    return jnp.asarray(obs.weights, jnp.float64)

  def candidate_plans(self, key: jax.Array, params, obs_features, weights,
                      remaining, sleep_ok=True) -> jax.Array:
    """int32 [K, H]: the K candidate plans of one decision (`candidates` mode)."""
    cond = plan_cond(obs_features, weights, remaining, sleep_ok)
    if self.candidates == "distinct":
      log_probs, plans = enumerate_plan_log_probs(self.dag, self.model.apply, params, cond,
                                                  self.epsilon, self.temperature)
      return sample_distinct_plans(key, log_probs, plans, self.num_candidates)
    if self.candidates == "distinct_beam":
      return sample_distinct_plans_beam(key, self.dag, self.model.apply, params, cond,
                                        self.num_candidates, self.epsilon, self.temperature)
    traj = self.sample_plans(key, params, obs_features, weights, remaining, sleep_ok=sleep_ok)
    return traj.actions[:, :self.horizon]

  def sample_plans(self, key: jax.Array, params, obs_features, weights, remaining,
                   num: Optional[int] = None, sleep_ok=True) -> Trajectories:
    """`num` (default K) plan trajectories for one decision (ancestral, independent)."""
    num = self.num_candidates if num is None else num
    cond = plan_cond(obs_features, weights, remaining, sleep_ok)
    cond = jax.tree.map(lambda c: jnp.broadcast_to(c, (num,) + c.shape), cond)
    return sample_trajectories(key, self.dag, self.model.apply, params, cond, num,
                               self.epsilon, self.temperature)

  def propose(self, key: jax.Array, params, obs: Observation, catalog: Catalog,
              weights: Optional[jax.Array] = None) -> Decision:
    """The sampler's half of `decide`: the K candidate plans and their conditioning.

    Returns the Decision of a single-candidate controller: the first plan's first
    token, zero components and utilities, best = 0. `decide` scores the plans.
    """
    weights = self.selection_weights(obs) if weights is None else weights
    feats = observation_features(obs, catalog, self.belief)
    remaining = remaining_chunks(obs)
    sleep_ok = opening_sleep_ok(obs, self.sleep_while_stalled)
    plans = self.candidate_plans(key, params, feats, weights, remaining, sleep_ok)
    k = plans.shape[0]
    return Decision(action_index=plans[0, 0], plans=plans,
                    components=jnp.zeros((k, belief_lib.NUM_COMPONENTS), jnp.float64),
                    utilities=jnp.zeros((k,), jnp.float64), best=jnp.zeros((), jnp.int32),
                    obs_features=feats, remaining=remaining, sleep_ok=sleep_ok, weights=weights)

  def decide(self, key: jax.Array, params, obs: Observation, catalog: Catalog,
             weights: Optional[jax.Array] = None) -> Decision:
    """One decision for one session: sample K plans, score them, pick the best."""
    k_plan, k_belief = jax.random.split(key)
    proposal = self.propose(k_plan, params, obs, catalog, weights)
    if self.num_candidates == 1:
      return proposal
    components, utilities, best = select_plan(k_belief, self.env, obs, catalog, proposal.plans,
                                              proposal.weights, self.belief)
    return proposal.replace(action_index=proposal.plans[best, 0], components=components,
                            utilities=utilities, best=best)

  # ------------------------------------------------------------- Policy interface
  def act(self, key, policy_state, obs, catalog):
    if self.network_params is None:
      raise ValueError("GFNController.act: no network parameters; use controller.bind(params)")
    decision = self.decide(key, self.network_params, obs, catalog)
    return self.env.action_from_index(decision.action_index), policy_state


def make_server(controller: GFNController):
  """A jitted `serve(params, key, obs, weights, catalog) -> int32 [N] action indices`.

  `obs` and `weights` have a leading session axis N; `weights` replaces the
  observation's w (the user's preferences as the serving system knows them).
  """
  def one(params, key, obs, weights, catalog):
    obs = obs.replace(weights=jnp.asarray(weights, jnp.float64))
    return controller.decide(key, params, obs, catalog).action_index

  def serve(params, key, obs, weights, catalog):
    keys = jax.random.split(key, weights.shape[0])
    return jax.vmap(one, in_axes=(None, 0, 0, 0, None))(params, keys, obs, weights, catalog)

  return jax.jit(serve)

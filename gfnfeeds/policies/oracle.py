"""The clairvoyant oracle: an UPPER BOUND, not a controller a client could run.

It is the one policy that reads the World (SYSTEM.md sections 2 and 7): the true
future bandwidth (the session's trace from the real cursor) and the true watch
durations. It is a planner over the environment's exact dynamics: every
trajectory it considers is simulated with `FeedsEnv.step_env` itself (one
implementation of the dynamics) from the true EnvState, so every value it
compares is the exact final score_w that the trajectory gets in the evaluation.

Algorithm (a fortified rollout algorithm in the sense of Bertsekas, with local
search moves):

  * Start of the session (`init_clairvoyant`): each base policy in `base` (by
    default every rule controller: No-Save, Fixed-Preload, MPC + Fixed-Preload,
    PDAS, PDAS personalized; `gfnfeeds.policies.registry.load_policy("oracle")`
    adds the committed DAM, Incendio and GFlowNet controllers, their parameters
    passed with `bind`) is run to the end of the session from the true initial
    state, acting with the keys the session evaluator would give it
    (`gfnfeeds.env.rollout.decision_key` of the session's key), so each run IS
    that policy's evaluated trajectory on the session; the best of these
    complete trajectories, stored as its action sequence, is the incumbent.
  * Every decision at step t (`act_clairvoyant`): 2 + H + (2 + H) A candidate
    trajectories (A = the discrete action set, 16 by default; H = 4 variants of
    a clairvoyant continuation heuristic, `heuristic_action`: fetch only the
    chunks the user will play, in playback order, at level 0, 1, 2 or
    buffer-adaptive) are simulated exactly to the end of the session: keep the
    incumbent; delete its next action; switch to heuristic v now; insert any
    valid discrete action before the incumbent's next one; replace that one by
    any valid discrete action; any valid discrete action then heuristic v (the
    rollout algorithm proper). The best complete candidate (ties keep the
    incumbent) becomes the incumbent (stored actions up to a switch decision,
    then a heuristic, both replayed exactly) and its first action is executed.
    A candidate that has not ended within `slack` decisions after the
    incumbent's end is discarded (its value is unknown).

Guarantee (cost improvement). The dynamics are deterministic given the session,
so the value of "keep" at step t+1 equals the value of the candidate chosen at
step t: the value of the incumbent never decreases, and the final score equals
it. Hence on EVERY session the oracle scores at least as much as each of its base
policies evaluated with the same seed (the same session keys), stochastic ones
included, exactly, up to the float reproducibility of the environment's step and
of the networks under different batching (the env's delays are computed with exact
divisions for this reason). Against a policy that is not a base (random-shooting
MPC, a controller evaluated with another seed) there is no proof: the local search
with perfect information only makes it very likely; tests/test_reference_planners.py
checks it on a sample of sessions. Local search from a better incumbent is not
monotone: adding a base can lower the oracle's score on a session (never below
the best base).

Budget. Per decision 2 + H + (2 + H) A = 102 exact simulations of the rest of
the session: for a session of D decisions about 51 D^2 environment steps (D =
150: ~1.1M steps), orders of magnitude more than the GFlowNet's K x M = 160
belief simulations of H = 2 decisions. The base rollouts cost one evaluation of each base
policy. Invalid actions are never executed: a stored action that is invalid
when its turn comes (the environment would run it as a counted sleep of
`params.invalid_sleep_ms`) is executed as that sleep, which has the same
dynamics.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from gfnfeeds.env.feeds import Action, FeedsEnv, download, session_metrics, sleep
from gfnfeeds.env.rollout import decision_key
from gfnfeeds.policies.base import ClairvoyantPolicy, Policy
from gfnfeeds.policies.rules import FixedPreload, MpcFixedPreload, NoSave, Pdas, PdasPersonalized

UPPER_BOUND = "upper bound"


@struct.dataclass
class OracleState:
  """The incumbent trajectory of one session.

  Attributes:
    actions: Action with int32 [L] leaves: actions[s] is the action at decision s
      (L = the evaluator's decision limit + 1; entries past `end` are padding).
    end: int32, the decision count at which the incumbent's session ends.
    value: float64, the incumbent's exact final score_w.
    switch, mode: int32: from decision `switch` on, the incumbent follows the
      clairvoyant heuristic `mode` (see `heuristic_action`) instead of `actions`.
  """

  actions: Action
  end: jax.Array
  value: jax.Array
  switch: jax.Array
  mode: jax.Array


def _pad_action() -> Action:
  return download(0, 0)


def _score(state, params) -> jax.Array:
  return session_metrics(state, params)["score"]


def _as_action(a: Action) -> Action:
  return Action(slot=jnp.asarray(a.slot, jnp.int32), level=jnp.asarray(a.level, jnp.int32),
                sleep_ms=jnp.asarray(a.sleep_ms, jnp.int32))


HEURISTIC_MODES = 4  # levels 0, 1, 2, and buffer-adaptive


def heuristic_action(env: FeedsEnv, obs, state, mode) -> Action:
  """The oracle's clairvoyant continuation heuristic (reads the true watch durations).

  Downloads, in playback order, the next chunk that the user will play (never a
  chunk past the true watch time, so nothing is wasted) of the first window
  video that has one; sleeps 500 ms when none is left. Level: `mode` 0, 1, 2
  fixed, 3 adaptive on the playback buffered ahead of that chunk (>= 4 s: 2,
  >= 2 s: 1, else 0).
  """
  w = env.window
  pos = jnp.clip(state.play_id + jnp.arange(w), 0, env.num_videos - 1)
  watch = jnp.where(obs.slot_valid, state.session.watch_ms[pos], 0)
  useful = jnp.minimum((watch + 999) // 1000, obs.num_chunks)  # chunks the user plays
  need = obs.slot_valid & (obs.chunks_downloaded < useful)
  slot = jnp.argmax(need).astype(jnp.int32)
  before = jnp.arange(w) < slot
  ahead = (jnp.sum(jnp.where(before, jnp.minimum(obs.buffer_ms, jnp.maximum(
      watch - obs.play_ms, 0)), 0)) + obs.buffer_ms[slot])
  adaptive = jnp.where(ahead >= 4000, 2, jnp.where(ahead >= 2000, 1, 0))
  level = jnp.where(mode >= 3, adaptive, jnp.clip(mode, 0, 2)).astype(jnp.int32)
  return jax.tree.map(lambda a, b: jnp.where(jnp.any(need), a, b), download(slot, level),
                      sleep(500))


def default_base_policies() -> tuple[Policy, ...]:
  return (NoSave(), FixedPreload(), MpcFixedPreload(), Pdas(), PdasPersonalized())


@dataclasses.dataclass(frozen=True)
class ClairvoyantOracle(ClairvoyantPolicy):
  """Clairvoyant oracle (upper bound): fortified rollout over exact simulations.

  Attributes:
    env: the FeedsEnv (its step_env simulates every candidate; its discrete
      action set gives the insert/replace moves).
    base: the base policies whose complete trajectories seed the incumbent; the
      oracle never scores below any of them on any session (evaluated with the same
      seed). Observation-only policies; learned ones get their parameters from `bind`.
    local_search: run the per-decision moves (False: the best base trajectory only).
    slack: decisions a candidate may run past the incumbent's end before it is
      discarded.
  """

  env: FeedsEnv = FeedsEnv()
  base: tuple = dataclasses.field(default_factory=default_base_policies)
  local_search: bool = True
  slack: int = 4

  upper_bound = True  # printed labels say "upper bound"

  @property
  def name(self) -> str:
    return f"oracle ({UPPER_BOUND})"

  def bind(self, policy_params) -> "ClairvoyantOracle":
    """The oracle with each base policy bound to its parameters.

    `policy_params` is `()` (rule bases only) or a tuple with one entry per base
    policy (`()` for a rule), as `registry.load_policy("oracle", env)` returns.
    """
    if isinstance(policy_params, tuple) and not policy_params:
      return self
    if len(policy_params) != len(self.base):
      raise ValueError(f"ClairvoyantOracle.bind: {len(policy_params)} parameter entries for "
                       f"{len(self.base)} base policies")
    return dataclasses.replace(self, base=tuple(
        p.bind(pp) for p, pp in zip(self.base, policy_params)))

  # ------------------------------------------------------------- simulation helpers
  def _base_rollout(self, policy: Policy, key, obs, state, params, limit: int):
    """(actions [L], end, score) of `policy` run from `state` to the end of the session, acting
    at decision t with `decision_key(key, t)`: the keys the session evaluator gives it."""
    length = limit + 1
    pad = _pad_action()
    buf = jax.tree.map(lambda x: jnp.full((length,), x, jnp.int32), pad)
    pstate = policy.init(obs, params.catalog)

    def cond(c):
      return ~c[4]

    def body(c):
      obs, st, ps, buf, _ = c
      action, ps = policy.act(decision_key(key, st.steps), ps, obs, params.catalog)
      action = _as_action(action)
      at = jnp.minimum(st.steps, length - 1)
      buf = jax.tree.map(lambda b, a: b.at[at].set(a), buf, action)
      obs, st, _, term, trunc, _ = self.env.step_env(None, st, action, params)
      return obs, st, ps, buf, term | trunc | (st.steps >= limit)

    _, final, _, buf, _ = jax.lax.while_loop(
        cond, body, (obs, state, pstate, buf, jnp.asarray(False)))
    return buf, final.steps, _score(final, params)

  def _replay(self, obs, state, params, actions: Action, override, first: Action, shift,
              switch, mode, cap, limit: int):
    """Exact final score (or -inf if not ended within `cap` decisions) and decisions taken of
    the candidate whose j-th decision is `first` (j = 0, if override), else actions[src]
    with src = t + j + shift while src < switch, else the heuristic `mode`."""
    length = actions.slot.shape[0]
    t = state.steps

    def action_at(j, o, st):
      src = t + j + shift
      stored = jax.tree.map(lambda x: x[jnp.clip(src, 0, length - 1)], actions)
      a = jax.tree.map(lambda x, h: jnp.where(src < switch, x, h), stored,
                       heuristic_action(self.env, o, st, mode))
      return jax.tree.map(lambda f, x: jnp.where((j == 0) & override, f, x), first, a)

    def cond(c):
      j, _, _, done = c
      return ~done & (j < cap)

    def body(c):
      j, o, st, _ = c
      o, st, _, term, trunc, _ = self.env.step_env(None, st, action_at(j, o, st), params)
      return j + 1, o, st, term | trunc | (st.steps >= limit)

    j, _, final, done = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), obs, state,
                                                        jnp.asarray(False)))
    return jnp.where(done, _score(final, params), -jnp.inf), j

  # ------------------------------------------------------------- clairvoyant interface
  def init_clairvoyant(self, key, obs, state, params, limit: int) -> OracleState:
    if not self.base:
      raise ValueError("ClairvoyantOracle: at least one base policy is needed")
    runs = [self._base_rollout(p, key, obs, state, params, limit) for p in self.base]
    values = jnp.stack([r[2] for r in runs])
    best = jnp.argmax(values)
    pick = lambda *xs: jnp.stack(xs)[best]  # noqa: E731
    actions = jax.tree.map(pick, *[r[0] for r in runs])
    end = pick(*[r[1] for r in runs])
    # Past its end (only candidates that outlive it get there) the adaptive heuristic continues.
    return OracleState(actions=actions, end=end, value=values[best], switch=end,
                       mode=jnp.asarray(HEURISTIC_MODES - 1, jnp.int32))

  def act_clairvoyant(self, key, policy_state: OracleState, obs, state, params, limit: int):
    del key  # deterministic
    ps = policy_state
    t = state.steps
    if self.local_search:
      n, h = self.env.num_actions, HEURISTIC_MODES
      i32 = jnp.int32
      length = ps.actions.slot.shape[0]
      discrete = self.env.action_from_index(jnp.arange(n, dtype=i32))
      pad = jax.tree.map(lambda x: jnp.full((2 + h,), x, i32), _pad_action())
      tile = lambda x: jnp.concatenate([x] * (2 + h))  # noqa: E731
      first = jax.tree.map(lambda p, d: jnp.concatenate([p, tile(d)]), pad, discrete)
      # Candidates: keep, delete, own heuristic v (h), then insert a, replace a, a + heuristic v.
      override = jnp.concatenate([jnp.zeros((2 + h,), bool), jnp.ones(((2 + h) * n,), bool)])
      shift = jnp.concatenate([jnp.asarray([0, 1], i32), jnp.zeros((h,), i32),
                               jnp.full((n,), -1, i32), jnp.zeros(((1 + h) * n,), i32)])
      modes = jnp.arange(h, dtype=i32)
      mode = jnp.concatenate([jnp.stack([ps.mode, ps.mode]), modes, jnp.full((2 * n,), ps.mode),
                              jnp.repeat(modes, n)])
      switch = jnp.concatenate([jnp.stack([ps.switch, ps.switch]), jnp.full((h,), t),
                                jnp.full((2 * n,), ps.switch), jnp.full((h * n,), t + 1)])
      allowed = jnp.concatenate([jnp.ones((2 + h,), bool), tile(obs.action_mask)[:(2 + h) * n]])
      cap = ps.end - t + self.slack
      values, steps = jax.vmap(
          lambda o, f, s, sw, m: self._replay(obs, state, params, ps.actions, o, f, s, sw, m,
                                              cap, limit))(override, first, shift, switch, mode)
      values = jnp.where(allowed, values, -jnp.inf)
      best = jnp.argmax(values)  # the first maximum: ties keep the incumbent
      idx = jnp.arange(length, dtype=jnp.int32)
      src = idx + shift[best]
      shifted = jax.tree.map(lambda x: x[jnp.clip(src, 0, length - 1)], ps.actions)
      shifted = jax.tree.map(lambda a, p: jnp.where(src < length, a, p), shifted, _pad_action())
      chosen = jax.tree.map(lambda f: f[best], first)
      new = jax.tree.map(lambda a, f, old: jnp.where(idx < t, old, jnp.where(
          (idx == t) & override[best], f, a)), shifted, chosen, ps.actions)
      ps = OracleState(actions=new, end=t + steps[best], value=values[best],
                       switch=switch[best] - shift[best], mode=mode[best])
    at = jnp.minimum(t, ps.actions.slot.shape[0] - 1)
    stored = jax.tree.map(lambda x: x[at], ps.actions)
    action = jax.tree.map(lambda a, b: jnp.where(t < ps.switch, a, b), stored,
                          heuristic_action(self.env, obs, state, ps.mode))
    # A stored action that is invalid now runs as the env's invalid sleep anyway: execute
    # that sleep explicitly (same dynamics, no invalid action).
    invalid = self.env.step_env(None, state, action, params)[5]["invalid_action"]
    action = jax.tree.map(lambda s, a: jnp.where(invalid, s, a),
                          sleep(jnp.asarray(params.invalid_sleep_ms, jnp.int32)), action)
    return action, ps

"""The feeds GFlowNet controller: plan DAG, replay, belief model, selector, serving."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
from gfnfeeds.data.packing import World, pack_catalog, pack_world
from gfnfeeds.env.feeds import FeedsEnv, Session
from gfnfeeds.env.preferences import MMGC_WEIGHTS, archetype_preferences
from gfnfeeds.gfn.hypergrid import HyperGrid
from gfnfeeds.gfn.networks import MLPPolicy
from gfnfeeds.gfn.replay import replay_trajectories, with_log_rewards
from gfnfeeds.gfn.sampling import sample_trajectories
from gfnfeeds.planning import belief as belief_lib
from gfnfeeds.policies.gfn import (GFNController, enumerate_plan_log_probs, make_server,
                                   observation_features, observation_feature_dim, plan_cond,
                                   prefix_tree_policy_fn, sample_distinct_plans,
                                   sample_distinct_plans_beam, select_plan, sleep_allowed)
from gfnfeeds.gfn import losses
from gfnfeeds import numerics

ENV = FeedsEnv()


@pytest.fixture(scope="module")
def default_data():
  traces, _ = load_network_arg("default")
  videos, ladder = load_videos_arg("default")
  catalog = pack_catalog(videos, ladder)
  params = ENV.make_params(catalog, pack_world(traces), archetype_preferences())
  return catalog, params


def small_controller(**kw) -> GFNController:
  base = dict(env=ENV, horizon=2, num_candidates=4, hidden=(16,),
              belief=belief_lib.BeliefConfig(num_scenarios=3))
  base.update(kw)
  return GFNController(**base)


_step = jax.jit(ENV.step)


def advance(params, key, steps=5):
  """An observation a few decisions into a session (download the playing video at level 1)."""
  obs, state = ENV.reset(key, params)
  for _ in range(steps):
    obs, state, *_ = _step(key, state, jnp.asarray(1), params)
  return obs, state


# ----------------------------------------------------------------- plan DAG
def test_plan_dag_masks_follow_remaining_chunks_and_horizon(default_data):
  catalog, params = default_data
  ctrl = small_controller(horizon=3)
  dag = ctrl.dag
  obs, _ = advance(params, jax.random.PRNGKey(0))
  remaining = jnp.asarray([1, 0, 2, 5, 0], jnp.int32)
  cond = {"features": jnp.zeros((dag.cond_dim,)), "remaining": remaining}
  s = dag.init(cond)
  m0 = np.asarray(dag.forward_mask(s, cond))
  assert m0.shape == (ENV.num_actions + 1,) and not m0[-1]
  assert list(m0[:15].reshape(5, 3).all(axis=1)) == [True, False, True, True, False]
  assert m0[15]  # the sleep
  s = dag.step(s, jnp.asarray(0), cond)  # the only chunk left of slot 0
  m1 = np.asarray(dag.forward_mask(s, cond))
  assert not m1[:3].any() and m1[6:9].all()
  s = dag.step(dag.step(s, jnp.asarray(15), cond), jnp.asarray(7), cond)
  m3 = np.asarray(dag.forward_mask(s, cond))
  assert m3[-1] and m3.sum() == 1  # after H tokens only the exit
  assert list(np.asarray(s.tokens)) == [0, 15, 7]
  parent = dag.backward_step(s, jnp.asarray(0), cond)
  assert int(parent.length) == 2 and list(np.asarray(parent.planned)) == [1, 0, 0, 0, 0]
  assert int(dag.forward_action(s, jnp.asarray(0), cond)) == 7
  # At the first token the DAG's mask is the observation's action mask (sleep allowed).
  obs_cond = {"features": jnp.zeros((dag.cond_dim,)),
              "remaining": jnp.where(obs.slot_valid, obs.num_chunks - obs.chunks_downloaded, 0)}
  np.testing.assert_array_equal(np.asarray(dag.forward_mask(dag.init(obs_cond), obs_cond))[:-1],
                                np.asarray(obs.action_mask))
  # sleep_ok=False masks the sleep as the first token only.
  stalled = dict(cond, sleep_ok=jnp.asarray(False))
  s = dag.init(stalled)
  np.testing.assert_array_equal(np.asarray(dag.forward_mask(s, stalled))[:15], m0[:15])
  assert not dag.forward_mask(s, stalled)[15]
  assert dag.forward_mask(dag.step(s, jnp.asarray(6), stalled), stalled)[15]


def test_sleep_is_masked_while_the_playing_video_is_stalled(default_data):
  """`sleep_allowed` is False exactly when the playing video's buffer is empty with chunks
  left (a session's first decision); the controller then never sleeps, unless
  `sleep_while_stalled`, and its Decision records the flag for the training replay."""
  catalog, params = default_data
  first, _ = ENV.reset(jax.random.PRNGKey(0), params)
  assert not bool(sleep_allowed(first))  # startup: nothing buffered yet
  for key in jax.random.split(jax.random.PRNGKey(1), 4):
    obs, _ = advance(params, key)
    stalled = int(obs.buffer_ms[0]) <= 0 and int(obs.num_chunks[0]) > int(
        obs.chunks_downloaded[0])
    assert bool(sleep_allowed(obs)) == (not stalled)
  ctrl = small_controller(horizon=2, candidates="distinct")
  p = ctrl.init_params(jax.random.PRNGKey(2))
  keys = jax.random.split(jax.random.PRNGKey(3), 64)
  sleep = ENV.window * ENV.num_levels_hint
  for c, sleeps_allowed in ((ctrl, False),
                            (dataclasses.replace(ctrl, sleep_while_stalled=True), True)):
    dec = jax.jit(jax.vmap(c.decide, in_axes=(0, None, None, None)))(keys, p, first, catalog)
    opens_with_sleep = np.asarray(dec.plans)[:, :, 0] == sleep
    assert bool(opens_with_sleep.any()) == sleeps_allowed
    assert np.asarray(dec.sleep_ok).tolist() == [sleeps_allowed] * 64


@pytest.mark.parametrize("env_name", ["hypergrid", "plan"])
def test_replay_equals_sampling(env_name, default_data):
  key = jax.random.PRNGKey(3)
  if env_name == "hypergrid":
    env, cond, batch = HyperGrid(ndim=2, height=4), (), 16
    model = MLPPolicy(num_actions=env.num_actions, num_backward_actions=env.num_backward_actions,
                      hidden=(16,), flow_head=True)
    params = model.init(key, jnp.zeros((1, env.feature_dim)), jnp.zeros((1, 0)),
                        method=MLPPolicy.init_all)
  else:
    ctrl = small_controller(flow_head=True)
    env, model, batch = ctrl.dag, ctrl.model, 8
    params = ctrl.init_params(key)
    cond = {"features": jax.random.normal(key, (batch, env.cond_dim)),
            "remaining": jnp.tile(jnp.asarray([3, 1, 0, 2, 2], jnp.int32), (batch, 1))}
  traj = sample_trajectories(jax.random.PRNGKey(4), env, model.apply, params, cond, batch,
                             epsilon=0.3)
  again = replay_trajectories(env, model.apply, params, cond, traj.actions, traj.log_rewards)
  for field in ("mask", "lengths", "actions"):
    np.testing.assert_array_equal(getattr(again, field), getattr(traj, field))
  for field in ("log_pf", "log_pb", "log_flows", "log_rewards"):
    np.testing.assert_allclose(getattr(again, field), getattr(traj, field), atol=1e-5)
  relabelled = with_log_rewards(traj, jnp.full((batch,), 2.5))
  pos = np.arange(traj.log_flows.shape[1])[None, :] == np.asarray(traj.lengths)[:, None]
  assert np.all(np.asarray(relabelled.log_flows)[pos] == 2.5)
  np.testing.assert_array_equal(np.asarray(relabelled.log_flows)[~pos],
                                np.asarray(traj.log_flows)[~pos])


# ----------------------------------------------------------------- belief model
def test_conditional_watch_law(default_data):
  catalog, _ = default_data
  video, position = jnp.asarray(3), jnp.asarray(2500)
  u = jax.random.uniform(jax.random.PRNGKey(0), (40_000,), jnp.float64)
  watch = np.asarray(jax.vmap(belief_lib.conditional_watch_ms, in_axes=(0, None, None, None))(
      u, catalog, video, position))
  n = int(catalog.num_chunks[3])
  assert watch.min() > 2500 and watch.max() <= n * 1000
  # P(watch reaches chunk k | still watching at 2.5 s) = r(k) / P(W > 2.5 s).
  ret = np.asarray(catalog.retention[3])
  cdf = np.asarray(catalog.watch_cdf[3])
  p_after = 1.0 - (cdf[1] + (cdf[2] - cdf[1]) * 0.5)
  for k in (3, 5, 8):
    np.testing.assert_allclose(np.mean(watch >= k * 1000), ret[k] / p_after, atol=0.01)


def _constant_world(mbps: float, videos: int) -> World:
  return World(trace_times=jnp.asarray([[0.0, 1e7]]), trace_mbps=jnp.asarray([[mbps, mbps]]),
               trace_len=jnp.asarray([2], jnp.int32),
               watch_bank=jnp.full((1, videos), -1, jnp.int32))


def test_plan_scorer_reuses_the_environment_dynamics(default_data):
  """A plan scored in a scenario that IS the truth gives the environment's own outcome."""
  catalog, _ = default_data
  env = FeedsEnv(num_videos=5)
  watch = jnp.asarray([2600, 9000, 400, 15000, 3000], jnp.int32)
  session = Session(trace_index=jnp.asarray(0, jnp.int32), start_row=jnp.asarray(1, jnp.int32),
                    video_ids=jnp.arange(5, dtype=jnp.int32), watch_ms=watch,
                    weights=jnp.asarray(MMGC_WEIGHTS))
  params = env.make_params(catalog, _constant_world(1.7, 5), payload_portion=1.0)
  obs, state = env.reset_to_session(session, params)
  for a in (1, 1, 4, 1):  # same level everywhere: the unobserved levels do not matter
    obs, state, *_ = env.step_env(None, state, jnp.asarray(a), params)
  plan = jnp.asarray([1, 15, 1, 7, 4], jnp.int32)  # the user swipes video 0 during the plan
  config = belief_lib.BeliefConfig(num_scenarios=1, terminal_weight=0.0)
  bel = belief_lib.build_belief(jax.random.PRNGKey(0), env, obs, catalog, config)
  truth_state = jax.tree.map(lambda x: x[0], bel.state)
  truth_state = truth_state.replace(session=truth_state.session.replace(watch_ms=watch))
  comps, _ = belief_lib.run_plan(env, truth_state, jax.tree.map(lambda x: x[0], bel.world),
                                 bel.bandwidth_mbps[0], plan, catalog, config)
  # The same plan in the true environment (bandwidth 1.7 Mbps there and in the scenario).
  truth_world = jax.tree.map(lambda x: x[0], bel.world)
  truth_world = truth_world.replace(trace_mbps=jnp.full_like(truth_world.trace_mbps, 1.7))
  comps_true_bw, _ = belief_lib.run_plan(env, truth_state, truth_world, 1.7, plan, catalog,
                                         config)
  total = np.zeros(4)
  start = int(state.play_id)
  for token in np.asarray(plan):
    slot = token // 3 - (int(state.play_id) - start) if token < 15 else 0
    if token < 15 and slot < 0:
      continue  # swiped past: the scorer skips it, so does the client
    action = slot * 3 + token % 3 if token < 15 else token
    obs, state, _, _, _, info = env.step_env(None, state, jnp.asarray(action), params)
    total += [float(info[k]) for k in ("quality", "rebuffer_s", "smoothness", "megabits")]
  np.testing.assert_allclose(np.asarray(comps_true_bw), total, atol=1e-9)
  assert int(state.play_id) > start  # the plan did cross a swipe
  assert np.all(np.isfinite(np.asarray(comps)))


def test_decisions_never_read_the_hidden_future(default_data):
  """Changing the trace after the cursor changes no decision until the cursor gets there."""
  catalog, params = default_data
  ctrl = small_controller()
  p = ctrl.init_params(jax.random.PRNGKey(1))
  world = params.world
  obs, state = ENV.reset(jax.random.PRNGKey(5), params)
  row = int(state.ptr) + 6
  future = world.trace_mbps.at[:, row:].multiply(3.0)
  params_b = params.replace(world=world.replace(trace_mbps=future))
  state_b = state

  @jax.jit
  def step(key, state, params):
    o = ENV.get_obs(state, params)
    d = ctrl.decide(key, p, o, catalog)
    _, nxt, *_ = ENV.step_env(key, state, d.action_index, params)
    return d, nxt

  revealed = False
  for t in range(25):
    key = jax.random.PRNGKey(100 + t)
    da, state = step(key, state, params)
    db, state_b = step(key, state_b, params_b)
    if not revealed:
      assert int(da.action_index) == int(db.action_index)
      np.testing.assert_array_equal(np.asarray(da.plans), np.asarray(db.plans))
      np.testing.assert_array_equal(np.asarray(da.components), np.asarray(db.components))
    revealed = revealed or int(state.ptr) >= row
  assert revealed  # the test did reach the changed future


# ----------------------------------------------------------------- selector and serving
def test_selector_executes_first_token_of_best_plan(default_data):
  catalog, params = default_data
  obs, _ = advance(params, jax.random.PRNGKey(2))
  for cond in ("user", "mmgc"):
    ctrl = small_controller(condition=cond, num_candidates=6)
    p = ctrl.init_params(jax.random.PRNGKey(0))
    d = jax.jit(ctrl.decide)(jax.random.PRNGKey(7), p, obs, catalog)
    u = np.asarray(d.utilities)
    assert int(d.best) == int(np.argmax(u))
    assert int(d.action_index) == int(np.asarray(d.plans)[np.argmax(u), 0])
    expected_w = np.asarray(MMGC_WEIGHTS) if cond == "mmgc" else np.asarray(obs.weights)
    np.testing.assert_allclose(np.asarray(d.weights), expected_w)
    np.testing.assert_allclose(u, np.asarray(belief_lib.utility(d.components, d.weights)))
    assert bool(obs.action_mask[int(d.action_index)])
    if cond == "mmgc":
      continue  # the split below does not depend on the condition; one compile is enough
    # decide = propose (with the plan key) + select_plan (with the belief key).
    k_plan, k_belief = jax.random.split(jax.random.PRNGKey(7))
    proposal = jax.jit(ctrl.propose)(k_plan, p, obs, catalog)
    for field in ("plans", "obs_features", "remaining", "sleep_ok", "weights"):
      np.testing.assert_array_equal(getattr(proposal, field), getattr(d, field), err_msg=field)
    comps, utils, best = jax.jit(select_plan, static_argnums=(1, 6))(
        k_belief, ctrl.env, obs, catalog, proposal.plans, proposal.weights, ctrl.belief)
    # Two programs, so XLA may fuse the float64 sums differently: equal to rounding.
    np.testing.assert_allclose(comps, d.components, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(utils, d.utilities, rtol=1e-12, atol=1e-12)
    assert int(best) == int(d.best)
  single = small_controller(num_candidates=1)
  d1 = single.decide(jax.random.PRNGKey(7), single.init_params(jax.random.PRNGKey(0)), obs,
                     catalog)
  assert d1.plans.shape == (1, 2) and int(d1.action_index) == int(d1.plans[0, 0])
  assert d1.components.shape == (1, 4) and d1.utilities.shape == (1,) and int(d1.best) == 0


def test_enumerated_plan_distribution_is_the_samplers(default_data):
  """The exact plan distribution equals the ancestral sampler's log-probabilities, sums to 1,
  puts no mass on masked plans; "distinct" candidates are K different allowed plans."""
  catalog, params = default_data
  obs, _ = advance(params, jax.random.PRNGKey(5), steps=8)
  ctrl = small_controller(num_candidates=64)
  p = ctrl.init_params(jax.random.PRNGKey(1))
  feats = observation_features(obs, catalog, ctrl.belief)
  remaining = jnp.asarray([1, 0, 2, 5, 0], jnp.int32)  # slot 0: one chunk left, slots 1, 4 none
  cond = plan_cond(feats, obs.weights, remaining)
  lp, plans = jax.jit(lambda p, c: enumerate_plan_log_probs(ctrl.dag, ctrl.model.apply, p, c)
                      )(p, cond)
  lp, plans = np.asarray(lp), np.asarray(plans)
  t = ctrl.dag.num_tokens
  assert lp.shape == (t * t,) and plans.shape == (t * t, 2)
  np.testing.assert_allclose(np.logaddexp.reduce(lp[np.isfinite(lp)]), 0.0, atol=1e-5)
  # Allowed: neither token downloads slot 1 or 4, and slot 0 at most once.
  slot = np.where(plans < 15, plans // 3, -1)
  allowed = (~np.isin(slot, [1, 4]).any(1)) & ((slot == 0).sum(1) <= 1)
  np.testing.assert_array_equal(np.isfinite(lp), allowed)
  traj = ctrl.sample_plans(jax.random.PRNGKey(2), p, feats, obs.weights, remaining)
  sampled = np.asarray(traj.actions[:, :2])
  np.testing.assert_allclose(np.asarray(traj.log_pf.sum(1)), lp[sampled[:, 0] * t + sampled[:, 1]],
                             atol=1e-5)
  drawn = np.asarray(sample_distinct_plans(jax.random.PRNGKey(3), jnp.asarray(lp),
                                           jnp.asarray(plans), 64))
  assert len({tuple(x) for x in drawn}) == 64 and allowed[drawn[:, 0] * t + drawn[:, 1]].all()
  # Fewer allowed plans than K: the extra rows repeat the first draw, never a masked plan.
  few = jnp.where(jnp.arange(t * t) < 3, 0.0, -jnp.inf).astype(jnp.float32)
  drawn = np.asarray(sample_distinct_plans(jax.random.PRNGKey(4), few, jnp.asarray(plans), 5))
  assert {tuple(x) for x in drawn} == {tuple(x) for x in plans[:3]}
  # The controller with distinct candidates: K different plans, the best one's first token acts.
  dctrl = small_controller(num_candidates=6, candidates="distinct")
  d = jax.jit(dctrl.decide)(jax.random.PRNGKey(7), p, obs, catalog)
  assert len({tuple(x) for x in np.asarray(d.plans)}) == 6
  assert int(d.action_index) == int(np.asarray(d.plans)[int(np.argmax(d.utilities)), 0])
  assert bool(obs.action_mask[int(d.action_index)])
  with pytest.raises(ValueError, match="candidates"):
    small_controller(candidates="many")
  with pytest.raises(ValueError, match="enumerates"):
    small_controller(horizon=4, candidates="distinct")


def test_top_k_is_lax_top_k_bit_for_bit():
  """numerics.top_k (the distinct sampler's top-K) returns lax.top_k's values and indices:
  its total order of floats (NaN above inf, +0 above -0), lower index first on ties, under
  jit and vmap, in float32 and float64; a bad k names the axis size, ints are refused."""
  special = [0.0, -0.0, 1.0, np.nan, -np.inf, 2.0, -np.nan, np.inf, -np.inf, 0.0, 1.0]
  rng = np.random.default_rng(0)
  rows = np.round(rng.normal(size=(6, 40)) * 2) / 2  # many ties, and -0.0 next to 0.0
  rows[:, ::3] = -np.inf
  rows[0, :37] = -np.inf  # fewer finite entries than k
  rows[1, :len(special)] = special
  for dtype in (jnp.float32, jnp.float64):
    x = jnp.asarray(rows, dtype)
    for k in (0, 1, 10, 40):
      got = jax.jit(jax.vmap(lambda r: numerics.top_k(r, k)))(x)
      want = jax.lax.top_k(x, k)
      np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
      np.testing.assert_array_equal(np.asarray(got[0]).view(np.uint8),
                                    np.asarray(want[0]).view(np.uint8))
  with pytest.raises(ValueError, match=r"k must be in \[0, 40\]"):
    numerics.top_k(jnp.zeros(40), 41)
  with pytest.raises(TypeError, match="float"):
    numerics.top_k(jnp.arange(5), 2)


def plan_index(plans, t):
  """The enumeration's index of int plans [..., H] (base-t digits, first token first)."""
  h = plans.shape[-1]
  return sum(plans[..., d] * t ** (h - 1 - d) for d in range(h))


def test_beam_distinct_plans_have_the_enumerated_distribution(default_data):
  """Stochastic beam search draws K distinct allowed plans with the distribution of
  Gumbel-top-K over the enumerated plans: over 20,000 keys its first draw is within
  total variation 0.04 of the exact plan distribution (sampling noise ~0.013) and every
  plan's inclusion frequency within 0.02 of the enumeration-based sampler's."""
  catalog, params = default_data
  obs, _ = advance(params, jax.random.PRNGKey(5), steps=8)
  ctrl = small_controller(num_candidates=4)
  # Sharper than at initialisation, so the draws without replacement matter.
  p = jax.tree.map(lambda x: 3.0 * x, ctrl.init_params(jax.random.PRNGKey(1)))
  cond = jax.jit(lambda o: plan_cond(observation_features(o, catalog, ctrl.belief), o.weights,
                                     jnp.asarray([1, 0, 2, 5, 0], jnp.int32)))(obs)
  lp, plans = jax.jit(lambda p, c: enumerate_plan_log_probs(ctrl.dag, ctrl.model.apply, p, c,
                                                            0.05))(p, cond)
  t, n = ctrl.dag.num_tokens, 20_000
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  beam = np.asarray(jax.jit(jax.vmap(lambda k: sample_distinct_plans_beam(
      k, ctrl.dag, ctrl.model.apply, p, cond, 4, 0.05)))(keys))
  enum = np.asarray(jax.jit(jax.vmap(lambda k: sample_distinct_plans(k, lp, plans, 4)))(keys))
  b, e = plan_index(beam, t), plan_index(enum, t)
  assert all(len(set(row)) == 4 for row in b)
  exact = np.exp(np.asarray(lp))
  assert exact[b.reshape(-1)].min() > 0  # never a masked plan
  first = np.bincount(b[:, 0], minlength=t * t) / n
  assert 0.5 * np.abs(first - exact).sum() < 0.04
  inclusion_b = np.bincount(b.reshape(-1), minlength=t * t) / n
  inclusion_e = np.bincount(e.reshape(-1), minlength=t * t) / n
  assert np.abs(inclusion_b - inclusion_e).max() < 0.02
  # Only one plan allowed (sleep, sleep): every row is it.
  only_sleep = plan_cond(cond["features"][:-4], obs.weights, jnp.zeros((5,), jnp.int32))
  drawn = np.asarray(jax.jit(lambda c: sample_distinct_plans_beam(
      jax.random.PRNGKey(9), ctrl.dag, ctrl.model.apply, p, c, 4))(only_sleep))
  assert (drawn == 15).all()
  # Any horizon (the enumeration refuses H = 4): K distinct plans, first token acts.
  deep = small_controller(horizon=4, num_candidates=6, candidates="distinct_beam")
  pd = deep.init_params(jax.random.PRNGKey(2))
  d = jax.jit(deep.decide)(jax.random.PRNGKey(7), pd, obs, catalog)
  assert d.plans.shape == (6, 4) and len({tuple(x) for x in np.asarray(d.plans)}) == 6
  assert int(d.action_index) == int(np.asarray(d.plans)[int(np.argmax(d.utilities)), 0])


@pytest.mark.parametrize("horizon,flow_head", [(2, False), (3, True)])
def test_prefix_tree_replay_gives_the_same_loss_and_gradients(horizon, flow_head):
  """The training replay that runs each decision's s_0 once (and s_H only for flow
  losses) gives TB / DB losses and gradients equal to the replay of every row."""
  ctrl = small_controller(horizon=horizon, flow_head=flow_head)
  dag, k, groups = ctrl.dag, ctrl.num_candidates, 3
  p = ctrl.init_params(jax.random.PRNGKey(1))
  conds = {"features": jax.random.normal(jax.random.PRNGKey(2), (groups, dag.cond_dim)),
           "remaining": jnp.asarray([[1, 0, 2, 5, 0], [3, 3, 3, 3, 3], [0, 0, 1, 0, 0]],
                                    jnp.int32)}
  plans = jax.jit(jax.vmap(lambda key, c: sample_distinct_plans_beam(
      key, dag, ctrl.model.apply, p, c, k)))(jax.random.split(jax.random.PRNGKey(4), groups),
                                              conds).reshape(groups * k, horizon)
  cond = jax.tree.map(lambda c: jnp.repeat(c, k, axis=0), conds)
  actions = jnp.concatenate([plans, jnp.full((groups * k, 1), dag.exit_action)], axis=1)
  log_rewards = jax.random.normal(jax.random.PRNGKey(3), (groups * k,))

  def loss(params, policy_fn):
    traj = replay_trajectories(dag, policy_fn, params, cond, actions, log_rewards)
    if flow_head:
      return losses.detailed_balance(traj)[0]
    log_z = ctrl.model.apply(params, traj.cond_features, method=MLPPolicy.log_z)
    return losses.trajectory_balance(traj, log_z)[0]

  value_and_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  full, g_full = value_and_grad(p, ctrl.model.apply)
  shared, g_shared = value_and_grad(
      p, prefix_tree_policy_fn(ctrl.model.apply, horizon, k, final_rows=flow_head))
  np.testing.assert_allclose(float(shared), float(full), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  assert float(jnp.abs(jax.tree.leaves(g_full)[0]).max()) > 1e-3  # a gradient to compare
  with pytest.raises(ValueError, match="groups"):
    prefix_tree_policy_fn(ctrl.model.apply, horizon, k + 1, False)(
        p, jnp.zeros((groups * k * (horizon + 1), dag.feature_dim)),
        jnp.zeros((groups * k * (horizon + 1), dag.cond_dim)))


def test_server_batches_equal_single_decisions_and_do_not_retrace(default_data):
  catalog, params = default_data
  ctrl = small_controller()
  p = ctrl.init_params(jax.random.PRNGKey(0))
  obs, _ = jax.vmap(ENV.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(3), 4),
                                                  params)
  weights = jax.vmap(params.preferences.sample)(jax.random.split(jax.random.PRNGKey(4), 4))
  serve = make_server(ctrl)
  key = jax.random.PRNGKey(9)
  batch = np.asarray(serve(p, key, obs, weights, catalog))
  keys = jax.random.split(key, 4)
  for i in range(4):
    o = jax.tree.map(lambda x: x[i], obs).replace(weights=weights[i])
    assert int(ctrl.decide(keys[i], p, o, catalog).action_index) == batch[i]
  # Other keys, weights and a data set of the same shapes reuse the compiled program.
  other = catalog.replace(chunk_sizes=catalog.chunk_sizes * 1.5)
  serve(p, jax.random.PRNGKey(10), obs, weights[::-1], other)
  assert serve._cache_size() == 1


def test_observation_features_are_finite_and_sized(default_data):
  catalog, params = default_data
  obs, _ = advance(params, jax.random.PRNGKey(6), steps=12)
  f = observation_features(obs, catalog, belief_lib.BeliefConfig())
  assert f.shape == (observation_feature_dim(ENV),) and f.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(f))) and np.max(np.abs(np.asarray(f))) < 20


def test_bad_controller_settings_fail_clearly():
  with pytest.raises(ValueError, match="condition"):
    small_controller(condition="everyone")
  with pytest.raises(ValueError, match="num_candidates"):
    small_controller(num_candidates=0)
  with pytest.raises(ValueError, match="bind"):
    small_controller().act(jax.random.PRNGKey(0), (), None, None)
  with pytest.raises(ValueError, match="terminal_videos"):
    belief_lib.BeliefConfig(terminal_videos=1)


def test_policy_specs_set_nested_settings_and_name_bad_ones():
  from gfnfeeds.policies.registry import load_policy, parse_policy_spec
  name, checkpoint, overrides = parse_policy_spec(
      "gfn:num_candidates=3:belief.terminal_horizon_ms=8000")
  assert (name, checkpoint) == ("gfn", None)
  policy, params = load_policy(name, ENV, checkpoint, **overrides)
  assert policy.num_candidates == 3 and policy.belief.terminal_horizon_ms == 8000
  default, _ = load_policy("gfn", ENV)
  # Untouched nested fields keep the checkpoint's.
  assert policy.belief.num_scenarios == default.belief.num_scenarios
  assert policy.candidates == default.candidates
  assert jax.tree.leaves(params)
  with pytest.raises(TypeError, match="nope"):
    load_policy("gfn", ENV, **{"nope.x": 1})
  with pytest.raises(TypeError, match="bogus"):
    load_policy("gfn", ENV, **{"belief.bogus": 1})
  # Booleans are read as booleans ("False" must not become a truthy string); rule-like
  # planners take dotted settings too.
  _, _, flags = parse_policy_spec("random_shooting:belief.swipe_in_flight=False:"
                                  "belief.robust_discount=true:horizon=1")
  assert flags == {"belief.swipe_in_flight": False, "belief.robust_discount": True, "horizon": 1}
  shooter, _ = load_policy("random_shooting", ENV, **flags)
  assert shooter.belief.robust_discount is True and shooter.horizon == 1


def test_robust_discount_is_robustmpc_max_error():
  """prediction_error is RobustMPC's max |harmonic-mean prediction - sample| / sample over the
  newest `history` samples (each predicted from up to `history` samples before it), and the
  robust centre is the plain one divided by 1 + that error."""
  rates = np.asarray([0.0, 0.0, 2.0, 1.0, 4.0, 0.5, 3.0, 1.5])  # newest last; 2 empty slots
  valid = rates > 0
  history = 5
  want = 0.0
  for i in range(len(rates)):
    prev = [rates[j] for j in range(max(0, i - history), i) if valid[j]]
    if valid[i] and prev and i >= len(rates) - history:
      pred = len(prev) / sum(1.0 / r for r in prev)
      want = max(want, abs(pred - rates[i]) / rates[i])
  got = float(belief_lib.prediction_error(jnp.asarray(rates), jnp.asarray(valid), history))
  np.testing.assert_allclose(got, want, rtol=1e-12)
  assert got > 0.5  # an erratic history: the discount matters
  delay = np.full(8, 1080.0)  # 1 s of transmission + the 80 ms RTT: net rate = megabits
  obs = dataclasses.make_dataclass("O", ["tput_history_mbps", "delay_history_ms",
                                         "history_count"])(
      jnp.asarray(rates * 1000.0 / 1080.0), jnp.asarray(delay), jnp.asarray(6))
  plain = belief_lib.bandwidth_scenarios(obs, belief_lib.BeliefConfig())
  robust = belief_lib.bandwidth_scenarios(obs, belief_lib.BeliefConfig(robust_discount=True))
  np.testing.assert_allclose(np.asarray(robust), np.asarray(plain) / (1.0 + got), rtol=1e-9)

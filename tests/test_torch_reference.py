"""The PyTorch reference of the feeds GFlowNet training step does the same work as the JAX one.

Its plan scorer (the plain-Python reference simulator stepped through a plan in
a re-constructed belief scenario, plus the terminal term in Python) must give
the components of `belief.run_plan` for the same state, bandwidth and watch
durations; its features and network must equal the JAX ones.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.env.preferences import archetype_preferences
from gfnfeeds.planning import belief as belief_lib
from gfnfeeds.policies.gfn import GFNController, observation_features
from gfnfeeds.reference import torch_gfn as T

ENV = FeedsEnv()


@pytest.fixture(scope="module")
def default_data():
  traces, _ = load_network_arg("default")
  videos, ladder = load_videos_arg("default")
  catalog = pack_catalog(videos, ladder)
  params = ENV.make_params(catalog, pack_world(traces), archetype_preferences(),
                           watch_from_bank=False, random_offset=True)
  return catalog, params, T.ReferenceData.from_env_params(params)


def _observations(params, count=4):
  """Observations at several points of sessions (random valid actions, swipes included)."""
  rng = np.random.default_rng(0)
  step = jax.jit(lambda s, a: ENV.step_env(None, s, a, params))
  out = []
  for i in range(count):
    obs, state = ENV.reset(jax.random.PRNGKey(i), params)
    for _ in range(4 * i):
      a = int(rng.choice(np.flatnonzero(np.asarray(obs.action_mask))))
      obs, state, *_ = step(state, jnp.asarray(a))
    out.append(obs)
  return out


@pytest.mark.parametrize("swipe_in_flight,terminal_videos", [(False, 2), (True, 2), (False, 3)])
def test_plan_scoring_equals_jax_run_plan(default_data, swipe_in_flight, terminal_videos):
  catalog, params, data = default_data
  s = T.TorchGFNSettings(swipe_in_flight=swipe_in_flight, terminal_videos=terminal_videos)
  # The terminal term on (weight 1).
  config = belief_lib.BeliefConfig(swipe_in_flight=swipe_in_flight,
                                   terminal_videos=terminal_videos)
  plain = belief_lib.BeliefConfig()
  run_plain = jax.jit(lambda st, w, bw, plans: jax.vmap(
      lambda p: belief_lib.run_plan(ENV, st, w, bw, p, catalog, plain)[0])(plans))
  changed = 0
  run = jax.jit(lambda st, w, bw, plans: jax.vmap(
      lambda p: belief_lib.run_plan(ENV, st, w, bw, p, catalog, config)[0])(plans))
  plans = np.asarray(list(itertools.product(range(ENV.num_actions), repeat=2)), np.int32)
  checked = 0
  for n, obs in enumerate(_observations(params)):
    view = T.ObsView.from_observation(obs)
    bel = belief_lib.build_belief(jax.random.PRNGKey(10 + n), ENV, obs, catalog, config)
    for m in (0, config.num_scenarios - 1):
      state = jax.tree.map(lambda x: x[m], bel.state)
      world = jax.tree.map(lambda x: x[m], bel.world)
      expected = np.asarray(run(state, world, bel.bandwidth_mbps[m], jnp.asarray(plans)))
      scenario = T.scenario_from_view(view, data, s, float(bel.bandwidth_mbps[m]),
                                      np.asarray(state.session.watch_ms))
      got = np.stack([T.score_plan(scenario, p, data, s) for p in plans])
      np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
      checked += len(plans)
      changed += int(np.sum(np.any(expected != np.asarray(
          run_plain(state, world, bel.bandwidth_mbps[m], jnp.asarray(plans))), axis=1)))
  assert checked == 4 * 2 * ENV.num_actions ** 2
  # The swipe-in-flight path, resp. the third video, is exercised (some scenario swipes inside
  # the window, resp. reaches the video after next in it).
  assert (changed > 0) == (config != plain)


def test_features_and_belief_inputs_equal_jax(default_data):
  catalog, params, data = default_data
  s = T.TorchGFNSettings()
  config = belief_lib.BeliefConfig()
  for obs in _observations(params):
    view = T.ObsView.from_observation(obs)
    np.testing.assert_allclose(T.observation_features_np(view, data, s),
                               np.asarray(observation_features(obs, catalog, config)), atol=1e-6)
    np.testing.assert_allclose(T.bandwidth_scenarios_np(view, s),
                               np.asarray(belief_lib.bandwidth_scenarios(obs, config)),
                               rtol=1e-12)
    u = np.linspace(0.0, 0.999, 7)
    for slot in np.flatnonzero(view.slot_valid):
      expected = jax.vmap(belief_lib.conditional_watch_ms, in_axes=(0, None, None, None))(
          jnp.asarray(u), catalog, obs.slot_video[slot], obs.play_ms[slot])
      np.testing.assert_array_equal(
          T.conditional_watch_ms_np(u, data, int(view.slot_video[slot]), int(view.play_ms[slot])),
          np.asarray(expected))


def test_network_equals_flax_policy():
  if T.torch_missing():
    pytest.skip(T.torch_missing())
  import torch
  ctrl = GFNController(env=ENV, horizon=2)
  s = T.TorchGFNSettings(horizon=2)
  params = ctrl.init_params(jax.random.PRNGKey(0))
  net = T.make_network(s)
  T.load_flax_params(net, params)
  rng = np.random.default_rng(1)
  feats = rng.random((5, s.feature_dim)).astype(np.float32)
  cond = rng.random((5, s.cond_dim)).astype(np.float32)
  out = ctrl.model.apply(params, jnp.asarray(feats), jnp.asarray(cond))
  log_z = ctrl.model.apply(params, jnp.asarray(cond), method=type(ctrl.model).log_z)
  with torch.no_grad():
    np.testing.assert_allclose(net(torch.as_tensor(feats), torch.as_tensor(cond)).numpy(),
                               np.asarray(out.forward_logits), atol=1e-4)
    np.testing.assert_allclose(net.log_z_of(torch.as_tensor(cond)).numpy(), np.asarray(log_z),
                               atol=1e-4)


@pytest.mark.parametrize("sleep_ok", [True, False])
def test_enumerated_plans_equal_jax(default_data, sleep_ok):
  """The torch reference's exact plan distribution ("distinct" candidates) is the JAX one,
  with and without the first-token sleep mask."""
  if T.torch_missing():
    pytest.skip(T.torch_missing())
  import torch
  from gfnfeeds.policies.gfn import enumerate_plan_log_probs, plan_cond
  catalog, params, data = default_data
  ctrl = GFNController(env=ENV, horizon=2, hidden=(32,), epsilon=0.1, candidates="distinct")
  s = T.TorchGFNSettings(horizon=2, hidden=(32,), epsilon=0.1, candidates="distinct",
                         num_candidates=6, num_sessions=1, rollout_steps=1)
  p = ctrl.init_params(jax.random.PRNGKey(0))
  trainer = T.TorchReferenceTrainer(s, data, seed=0, threads=1)
  T.load_flax_params(trainer.net, p)
  obs = _observations(params)[3]
  cond = plan_cond(observation_features(obs, catalog, ctrl.belief), obs.weights,
                   jnp.asarray([1, 0, 2, 5, 0], jnp.int32), sleep_ok)
  lp, plans = enumerate_plan_log_probs(ctrl.dag, ctrl.model.apply, p, cond, 0.1, 1.0)
  args = (torch.as_tensor(np.array(cond["features"]))[None],
          torch.as_tensor(np.array(cond["remaining"]))[None], torch.as_tensor([sleep_ok]))
  tlp, tplans = trainer.enumerate_plans(*args)
  np.testing.assert_array_equal(tplans[0].numpy(), np.asarray(plans))
  np.testing.assert_allclose(tlp[0].numpy(), np.asarray(lp), atol=1e-4)
  opens_with_sleep = np.asarray(plans)[:, 0] == ctrl.dag.num_tokens - 1
  assert np.isfinite(np.asarray(lp)[opens_with_sleep]).any() == sleep_ok
  drawn = trainer.sample_distinct_plans(*args)
  assert drawn.shape == (1, 6, 2) and len({tuple(x) for x in drawn[0]}) == 6


def test_trainer_update_runs_and_samples_valid_plans(default_data):
  if T.torch_missing():
    pytest.skip(T.torch_missing())
  _, _, data = default_data
  s = T.TorchGFNSettings(num_candidates=3, num_scenarios=2, hidden=(16,), num_sessions=2,
                         rollout_steps=3)
  trainer = T.TorchReferenceTrainer(s, data, seed=0, threads=1)
  batch, _ = trainer.rollout()
  assert batch["plans"].shape == (6, 3, 2) and batch["components"].shape == (6, 3, 4)
  for plans, remaining in zip(batch["plans"], batch["remaining"]):
    for plan in plans:
      planned = np.zeros(s.window, int)
      for token in plan:
        if token < s.window * s.levels:
          planned[token // s.levels] += 1
      assert np.all(planned <= remaining)
  # A session's first decision is stalled (nothing buffered): no plan opens with a sleep.
  assert not batch["sleep_ok"].all()
  sleep_token = s.num_tokens - 1
  assert not (batch["plans"][~batch["sleep_ok"], :, 0] == sleep_token).any()
  metrics = trainer.update()
  assert np.isfinite(metrics["loss"]) and trainer.decisions == 12

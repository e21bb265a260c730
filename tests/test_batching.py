"""The batched step: `Environment.step_batch` / `FeedsEnv.step_env_batch` equal vmap(step) bit for
bit, and the helpers they are built from (bounded loops, compaction of the rare slow rows).

Runs on the embedded default data (no ../shared needed).
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gfnfeeds.data.datasets import load_network_arg, load_videos_arg
from gfnfeeds.data.packing import pack_catalog, pack_world
from gfnfeeds.env import environment
from gfnfeeds.env.feeds import FeedsEnv
from gfnfeeds.env.preferences import archetype_preferences
from gfnfeeds.policies.base import RandomValidPolicy
from tests.test_env_properties import tree_equal

# Sessions truncated after 12 decisions, so that a short rollout crosses many auto-resets.
ENV = FeedsEnv(max_steps=12)
N, STEPS = 48, 36


@pytest.fixture(scope="module")
def params():
  traces, _ = load_network_arg("default")
  videos, ladder = load_videos_arg("default")
  return ENV.make_params(pack_catalog(videos, ladder), pack_world(traces), archetype_preferences(),
                         random_offset=True, shuffle_videos=True)


# --- helpers --------------------------------------------------------------------------------------


def test_first_true_rows_equals_nonzero():
  rng = np.random.default_rng(0)
  for n, k, p in [(1, 1, 0.5), (10, 3, 0.0), (10, 3, 1.0), (257, 16, 0.1), (1000, 40, 0.03)]:
    mask = rng.random(n) < p
    got = np.asarray(jax.jit(environment.first_true_rows, static_argnums=1)(jnp.asarray(mask), k))
    want = np.asarray(jnp.nonzero(jnp.asarray(mask), size=k, fill_value=n)[0])
    np.testing.assert_array_equal(got, want)


def _slow_square(x):
  # No multiply-add: XLA may fuse one into an FMA in one program and not in another.
  return {"y": x["a"] * x["a"], "z": x["b"] + 1}


@pytest.mark.parametrize("capacity", [1, 3, 64])
def test_compact_apply_equals_select_of_full_map(capacity):
  """Rows under the mask get fn, the others keep their outputs; several groups when the mask
  holds more rows than `capacity`; also under vmap (a batch of batches)."""
  rng = np.random.default_rng(capacity)
  n = 20
  inputs = {"a": jnp.asarray(rng.normal(size=(n, 3))), "b": jnp.arange(n, dtype=jnp.int32)}
  outputs = {"y": jnp.zeros((n, 3)), "z": jnp.full((n,), -1, jnp.int32)}
  for mask in [np.zeros(n, bool), np.ones(n, bool), rng.random(n) < 0.3]:
    got = jax.jit(lambda m: environment.compact_apply(m, _slow_square, inputs, outputs,
                                                      capacity))(jnp.asarray(mask))
    m = jnp.asarray(mask)
    want = jax.tree.map(lambda x, y: jnp.where(m.reshape((-1,) + (1,) * (x.ndim - 1)), x, y),
                        jax.vmap(_slow_square)(inputs), outputs)
    assert tree_equal(got, want)
  masks = jnp.asarray(rng.random((4, n)) < 0.4)
  batched = jax.jit(jax.vmap(lambda m: environment.compact_apply(m, _slow_square, inputs,
                                                                 outputs, capacity)))(masks)
  for i in range(4):
    single = environment.compact_apply(masks[i], _slow_square, inputs, outputs, capacity)
    assert tree_equal(jax.tree.map(lambda x: x[i], batched), single)


def _countdown(lane, carry, max_iters):
  """A loop whose trip count varies per row: add `lane` to the total while the counter runs."""
  def cond(c):
    return c[0] > 0

  def body(c):
    return c[0] - 1, c[1] + lane

  return environment.bounded_while(cond, body, carry, max_iters)


def test_bounded_while_and_batched_loop_equal_the_while_loop():
  counters = jnp.asarray([0, 1, 2, 3, 7, 11, 2, 0], jnp.int32)
  lanes = jnp.linspace(0.1, 0.8, 8)
  carry = (counters, jnp.zeros((8,)))
  exact = jax.vmap(lambda l, c: jax.lax.while_loop(lambda c: c[0] > 0,
                                                   lambda c: (c[0] - 1, c[1] + l), c))(lanes, carry)
  bounded, finished = jax.vmap(lambda l, c: _countdown(l, c, 3))(lanes, carry)
  np.testing.assert_array_equal(np.asarray(finished), np.asarray(counters) <= 3)
  done = np.asarray(finished)
  np.testing.assert_array_equal(np.asarray(bounded[1])[done], np.asarray(exact[1])[done])
  unbounded, fin = jax.vmap(lambda l, c: _countdown(l, c, None))(lanes, carry)
  assert bool(jnp.all(fin)) and tree_equal(unbounded, exact)
  for bound, capacity in [(0, 1), (2, 2), (3, 8), (20, 1)]:
    got = jax.jit(lambda l, c: environment.batched_loop(_countdown, l, c, bound, capacity))(
        lanes, carry)
    assert tree_equal(got, exact), (bound, capacity)


# --- the batched environment step -----------------------------------------------------------------


def _rollouts(env, params, step_fn):
  """STEPS random-valid decisions of N sessions with `step_fn`; every step's outputs stacked."""
  policy = RandomValidPolicy(env)

  def run(key):
    keys = jax.random.split(key, N)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)

    def body(carry, t):
      obs, state = carry
      k = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
      action = jax.vmap(lambda kk, o: policy.act(kk, (), o, params.catalog)[0])(k, obs)
      step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(k, 7)
      out = step_fn(step_keys, state, action)
      rows_crossed = out[1].ptr - state.ptr  # negative across a reset or a wrap; fine for > test
      return (out[0], out[1]), (out, rows_crossed)

    return jax.lax.scan(body, (obs, state), jnp.arange(STEPS))[1]

  return jax.jit(run)(jax.random.PRNGKey(11))


@pytest.mark.parametrize("bounds", [(6, 2), (1, 1)])
def test_step_batch_equals_vmap_of_step(params, bounds):
  """Every output of every step (observations, states, rewards, flags, info with metrics and the
  final observation) is bitwise vmap(step)'s, across auto-resets (several in one step, with
  groups of one) and across downloads that outrun the bounded loops."""
  env = dataclasses.replace(ENV, batch_transmit_rows=bounds[0], batch_play_videos=bounds[1])
  reference, _ = _rollouts(env, params,
                           lambda k, s, a: jax.vmap(env.step, in_axes=(0, 0, 0, None))(k, s, a,
                                                                                        params))
  batched, rows = _rollouts(env, params,
                            lambda k, s, a: env.step_batch(k, s, a, params, reset_capacity=1))
  assert tree_equal(batched, reference)
  ended = np.asarray(reference[3] | reference[4])
  assert (ended.sum(axis=1) >= 2).any()  # several sessions reset in one step: several groups
  assert (np.asarray(rows) > bounds[0]).any()  # some downloads needed the exact continuation


def test_step_batch_key_fn_derives_keys_only_where_used(params):
  """With key_fn, step_batch equals vmap(step) on the derived keys."""
  steps = jnp.full((N,), 5, jnp.int32)
  keys = jax.random.split(jax.random.PRNGKey(3), N)
  obs, state = jax.vmap(ENV.reset, in_axes=(0, None))(keys, params)
  state = state.replace(steps=jnp.full((N,), ENV.max_steps - 1, jnp.int32))  # all end now
  action = jnp.zeros((N,), jnp.int32)
  derived = jax.vmap(jax.random.fold_in)(keys, steps)
  want = jax.jit(jax.vmap(ENV.step, in_axes=(0, 0, 0, None)))(derived, state, action, params)
  got = jax.jit(lambda k, s, a: ENV.step_batch(k, s, a, params,
                                               key_fn=lambda ks: jax.random.fold_in(*ks)))(
      (keys, steps), state, action)
  assert tree_equal(got, want)
  assert bool(jnp.all(got[4]))


def test_step_batch_does_not_retrace(params):
  """One trace for every step and for another data set of the same shapes."""
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(keys, state, action, params):
    return ENV.step_batch(keys, state, action, params)

  keys = jax.random.split(jax.random.PRNGKey(0), 8)
  obs, state = jax.vmap(ENV.reset, in_axes=(0, None))(keys, params)
  other = params.replace(world=params.world.replace(
      trace_mbps=params.world.trace_mbps * 0.5))
  for t, p in enumerate([params, params, other, other]):
    obs, state, *_ = step(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t), state,
                          jnp.argmax(obs.action_mask, axis=-1).astype(jnp.int32), p)
  chex.clear_trace_counter()


def test_autoreset_rollout_depends_on_own_key_only_with_a_stateful_policy(params):
  """make_autoreset_rollout with a policy that carries state (No-Save's throughput estimator,
  re-initialised at every auto-reset): session i of a batch equals session i run alone."""
  from gfnfeeds.env.rollout import make_autoreset_rollout
  from gfnfeeds.policies.rules import NoSave
  policy = NoSave()
  assert jax.tree.leaves(jax.eval_shape(lambda o: policy.init(o, params.catalog),
                                        jax.eval_shape(ENV.reset, jax.random.PRNGKey(0), params)[0]))
  rollout = jax.jit(make_autoreset_rollout(ENV, policy, 30))
  keys = jax.random.split(jax.random.PRNGKey(8), 3)
  batch = rollout(keys, params)
  assert int(batch["sessions_ended"].sum()) > 0
  for i in range(3):
    alone = rollout(keys[i:i + 1], params)
    assert tree_equal(jax.tree.map(lambda x: x[i:i + 1], batch), alone), i

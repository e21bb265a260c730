"""Trajectory sampling: one `lax.scan` of `max_length` steps with static shapes.

At step t the policy network runs ONCE on the states s_t of the batch. That
single output gives (a) the forward distribution from which a_t is drawn,
(b) log P_F(a_t | s_t) for the loss, (c) log F(s_t), and (d) the backward
distribution at s_t, which scores the transition s_{t-1} -> s_t that led
there. So when `sample_trajectories` is called inside a loss function under
`jax.grad`, the log-probabilities it returns are differentiable and the loss
needs no second forward pass (see `gfnfeeds.gfn.train`).

A trajectory of length L (forward actions, exit included) visits
s_0, ..., s_{L-1} = x and ends in the terminal (exited) state s_L. Step t is
valid iff t < L. The scan always runs `T = env.max_length` steps (static
shapes); finished rows are carried unchanged and their outputs masked. Whether
the network still runs on them is `active_buckets` (see `sample_trajectories`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from gfnfeeds.gfn.dag import DAGEnv, batch_apply
from gfnfeeds.gfn.networks import PolicyOutput
from gfnfeeds.numerics import prefix_count

F32 = jnp.float32
PolicyFn = Callable[[Any, jax.Array, jax.Array], PolicyOutput]


@struct.dataclass
class Trajectories:
  """A batch of B complete trajectories padded to T = env.max_length actions.

  Attributes:
    states: env state pytree, leaves [B, T+1, ...]: s_0 .. s_T (s_t = s_L for t >= L).
    features: float32 [B, T+1, F]: featurize(s_t).
    cond: the conditioning pytree, leaves [B, ...].
    cond_features: float32 [B, C].
    actions: int32 [B, T]: a_t (the exit action at padded steps).
    mask: bool [B, T]: step t is valid (t < L).
    log_pf: float32 [B, T]: log P_F(a_t | s_t) of the policy itself (no exploration,
      temperature 1); 0 at padded steps.
    log_pb: float32 [B, T]: log P_B(s_t | s_{t+1}); 0 for the exit transition and at
      padded steps.
    log_flows: float32 [B, T+1]: log F(s_t) for t < L, log R(x) at t = L (the reward
      stands in for the flow of the exit edge's target, as in DB), 0 for t > L; all
      zero except position L when the policy has no flow head.
    log_rewards: float32 [B]: log R(x | cond).
    terminal_states: env state pytree, leaves [B, ...]: the exited states s_L.
    lengths: int32 [B]: L.
  """

  states: Any
  features: jax.Array
  cond: Any
  cond_features: jax.Array
  actions: jax.Array
  mask: jax.Array
  log_pf: jax.Array
  log_pb: jax.Array
  log_flows: jax.Array
  log_rewards: jax.Array
  terminal_states: Any
  lengths: jax.Array


def exploration_log_probs(logits: jax.Array, mask: jax.Array, epsilon, temperature) -> jax.Array:
  """log((1 - eps) softmax(logits / temperature) + eps * uniform(mask)), -inf off the mask.

  `mask` must have at least one true entry per row.
  """
  logits = jnp.where(mask, logits.astype(F32) / temperature, -jnp.inf)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  count = jnp.sum(mask, axis=-1, keepdims=True).astype(F32)
  log_u = jnp.where(mask, -jnp.log(count), -jnp.inf)
  epsilon = jnp.asarray(epsilon, F32)
  return jnp.logaddexp(jnp.log1p(-epsilon) + log_p, jnp.log(epsilon) + log_u)


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """log_softmax over the true entries of `mask`; rows with no true entry give zeros."""
  any_valid = jnp.any(mask, axis=-1, keepdims=True)
  safe_mask = jnp.logical_or(mask, jnp.logical_not(any_valid))
  out = jax.nn.log_softmax(jnp.where(safe_mask, logits.astype(F32), -jnp.inf), axis=-1)
  # float32 constants: two Python floats would make a float64 select under x64.
  empty = jnp.where(any_valid, jnp.float32(-jnp.inf), jnp.float32(0.0))
  return jnp.where(jnp.logical_and(mask, any_valid), out, empty)


def _transition(env: DAGEnv, n: int, out: PolicyOutput, state, cond, active, prev_backward,
                epsilon, temperature, draw):
  """The part of one sampling step shared by every sampler, on n rows.

  From the policy output at s_t: the masks, the action drawn by `draw(sample
  log-probs)` (exit on finished rows), log P_F(a_t | s_t), the log P_B of the
  transition that led to s_t, log F(s_t), the child states (finished rows carried
  unchanged) and the backward action of the new transition.
  """
  # Terminal rows get an all-true mask so that no row is empty (their values are dropped).
  fmask = batch_apply(env.forward_mask, n, state, cond)
  fmask = jnp.logical_or(fmask, jnp.logical_not(active)[:, None])
  logits = out.forward_logits.astype(F32)
  log_pf_all = masked_log_softmax(logits, fmask)
  sample_lp = exploration_log_probs(jax.lax.stop_gradient(logits), fmask, epsilon, temperature)
  action = jnp.where(active, draw(sample_lp).astype(jnp.int32), env.exit_action)
  log_pf = jnp.where(active, jnp.take_along_axis(log_pf_all, action[:, None], axis=-1)[:, 0], 0.0)
  # log P_B of the transition s_{t-1} -> s_t, read off the backward head at s_t.
  bmask = batch_apply(env.backward_mask, n, state, cond)
  if out.backward_logits is not None:
    log_pb_all = masked_log_softmax(out.backward_logits, bmask)
    log_pb_in = jnp.take_along_axis(log_pb_all, prev_backward[:, None], axis=-1)[:, 0]
  else:
    log_pb_in = -jnp.log(jnp.maximum(jnp.sum(bmask, axis=-1), 1).astype(F32))
  log_pb_in = jnp.where(active, log_pb_in, 0.0)
  log_flow = (jnp.where(active, out.log_flow.astype(F32), 0.0) if out.log_flow is not None
              else jnp.zeros((n,), F32))
  child = batch_apply(env.step, n, state, action, cond)
  next_state = jax.tree.map(
      lambda c, s: jnp.where(active.reshape((n,) + (1,) * (c.ndim - 1)), c, s), child, state)
  backward = batch_apply(env.backward_action, n, state, action, cond).astype(jnp.int32)
  backward = jnp.clip(backward, 0, max(env.num_backward_actions - 1, 0))
  return action, log_pf, log_pb_in, log_flow, next_state, backward


def _policy_on_active(policy_fn: PolicyFn, params, features, cond_features, active,
                      num_buckets: int) -> PolicyOutput:
  """The policy on the rows where `active` only, in the smallest row bucket that holds them.

  Buckets: 0 rows (every row finished: the network is skipped) and B, B/2, ...,
  B/2^(num_buckets-1) rows. Active rows are gathered to the front, the network
  runs on the bucket (one `lax.switch` branch per bucket), outputs are scattered
  back; inactive rows get zeros (the caller masks them).
  """
  batch = features.shape[0]
  sizes = sorted({max(1, batch >> i) for i in range(num_buckets)})
  count = jnp.sum(active)
  branch = jnp.where(count == 0, 0, 1 + jnp.sum(jnp.asarray(sizes[:-1]) < count))
  # Row r of the bucket is the r-th active row; the tail of the bucket repeats row 0.
  slot = jnp.where(active, prefix_count(active) - 1, batch)
  rows = jnp.zeros((batch,), jnp.int32).at[slot].set(jnp.arange(batch, dtype=jnp.int32),
                                                      mode="drop")
  out_shape = jax.eval_shape(lambda f, c: policy_fn(params, f, c), features, cond_features)

  def zeros(features, cond_features):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

  def run(size):
    def f(features, cond_features):
      take = rows[:size]
      out = jax.checkpoint(policy_fn)(params, features[take], cond_features[take])
      keep = jnp.arange(size) < count  # drop the repeated tail rows
      return jax.tree.map(
          lambda o: jnp.zeros((batch,) + o.shape[1:], o.dtype).at[
              jnp.where(keep, take, batch)].set(o, mode="drop"), out)
    return f

  return jax.lax.switch(branch, [zeros] + [run(s) for s in sizes], features, cond_features)


def _compact_sizes(batch: int, levels: int) -> list[int]:
  """The static row counts of the compacted sampler: ceil(B k / levels), k = levels .. 1."""
  return sorted({-(-batch * k // levels) for k in range(1, levels + 1)}, reverse=True)


def _gather_rows(tree, rows):
  return jax.tree.map(lambda x: x[rows], tree)


def _sample_compact(key, env: DAGEnv, policy_fn: PolicyFn, params, cond, batch: int, epsilon,
                    temperature, levels: int, chunk: int):
  """The compacted sampler (`compact=levels` of `sample_trajectories`); returns the raw outputs.

  Forward: a sequence of `lax.while_loop`s, one per static row count s in
  `_compact_sizes(batch, levels)` (B, B(levels-1)/levels, ..., B/levels). Loop
  s steps the s rows it holds (the network runs on s rows) as long as more than
  the next size's rows are unfinished; then the unfinished rows are gathered
  into the next, smaller array. Trajectories only finish, so sizes only shrink;
  the loops run T steps in all. No `switch`, and nothing in it is differentiated.

  Backward (`jax.custom_vjp`): the gradient of the returned log-probs and log-flows
  with respect to `params` is a sum over the valid (row, step) pairs only. They are
  listed (N of the B x T slots), cut into chunks of `chunk` rows, and each chunk is
  one `jax.vjp` of the policy on the states recorded by the forward pass: big
  matmuls on exactly the visited states, no residual stored per step (the forward
  activations are recomputed once, chunk by chunk, inside the backward pass).
  """
  steps = env.max_length
  exit_action = env.exit_action
  sizes = _compact_sizes(batch, levels)
  i32 = jnp.int32

  def forward(params, key, cond, epsilon, temperature):
    cond_features = batch_apply(env.cond_features, batch, cond)
    state0 = batch_apply(env.init, batch, cond)
    keys = jax.random.split(key, steps)

    def row_step(state, prev_backward, valid, rows, t):
      """One sampling step of the s rows `rows` (the plain sampler's body on a row subset)."""
      n = valid.shape[0]
      cond_c = _gather_rows(cond, rows)
      cf = cond_features[rows]
      active = jnp.logical_and(valid, jnp.logical_not(jax.vmap(env.is_terminal)(state)))
      out = policy_fn(params, batch_apply(env.featurize, n, state, cond_c), cf)
      # jax.random.categorical(keys[t], lp) on all B rows is argmax(gumbel + lp): the
      # same noise rows as the plain sampler, so both draw the same actions.
      noise = jax.random.gumbel(keys[t], (batch, env.num_actions), F32)[rows]
      action, log_pf, log_pb_in, log_flow, next_state, backward = _transition(
          env, n, out, state, cond_c, active, prev_backward, epsilon, temperature,
          lambda lp: jnp.argmax(noise + lp, axis=-1))
      return active, action, log_pf, log_pb_in, log_flow, next_state, backward

    def run_level(size, next_size, carry):
      def cond_fn(c):
        return jnp.logical_and(c["t"] < steps, c["live"] > next_size)

      def body(c):
        t = c["t"]
        active, action, log_pf, log_pb_in, log_flow, next_state, backward = row_step(
            c["state"], c["prev"], c["valid"], c["rows"], t)
        dest = jnp.where(active, c["rows"], batch)  # finished rows write nothing
        out = dict(c["out"])
        for name, value in (("action", action), ("active", active), ("log_pf", log_pf),
                            ("log_pb_in", log_pb_in), ("log_flow", log_flow),
                            ("prev", c["prev"])):
          out[name] = out[name].at[dest, t].set(value, mode="drop")
        out["states"] = jax.tree.map(lambda h, s: h.at[dest, t].set(s, mode="drop"),
                                     out["states"], c["state"])
        live = jnp.sum(jnp.logical_and(
            c["valid"], jnp.logical_not(jax.vmap(env.is_terminal)(next_state))), dtype=i32)
        return dict(c, t=t + 1, state=next_state, prev=backward, out=out, live=live)

      return jax.lax.while_loop(cond_fn, body, carry)

    def shrink(carry, size):
      """Writes every held row's state to `final` and keeps the unfinished ones, `size` rows."""
      rows, valid, state = carry["rows"], carry["valid"], carry["state"]
      final = jax.tree.map(lambda f, s: f.at[jnp.where(valid, rows, batch)].set(s, mode="drop"),
                           carry["final"], state)
      live = jnp.logical_and(valid, jnp.logical_not(jax.vmap(env.is_terminal)(state)))
      slot = jnp.where(live, prefix_count(live) - 1, size)
      src = jnp.zeros((size,), i32).at[slot].set(jnp.arange(live.shape[0], dtype=i32),
                                                 mode="drop")
      keep = jnp.arange(size, dtype=i32) < carry["live"]
      return dict(carry, rows=jnp.where(keep, rows[src], 0), valid=keep,
                  state=_gather_rows(state, src), prev=carry["prev"][src], final=final)

    zeros_bt = jnp.zeros((batch, steps), F32)
    out = dict(action=jnp.full((batch, steps), exit_action, i32),
               active=jnp.zeros((batch, steps), bool), log_pf=zeros_bt, log_pb_in=zeros_bt,
               log_flow=zeros_bt, prev=jnp.zeros((batch, steps), i32),
               states=jax.tree.map(lambda s: jnp.zeros((batch, steps) + s.shape[1:], s.dtype),
                                   state0))
    carry = dict(t=jnp.zeros((), i32), rows=jnp.arange(batch, dtype=i32),
                 valid=jnp.ones((batch,), bool), state=state0,
                 prev=jnp.zeros((batch,), i32), out=out, final=state0,
                 live=jnp.asarray(batch, i32))
    for k, size in enumerate(sizes):
      if k > 0:
        carry = shrink(carry, size)
      carry = run_level(size, sizes[k + 1] if k + 1 < len(sizes) else 0, carry)
    carry = shrink(carry, 1)
    out = carry["out"]
    return dict(actions=out["action"], mask=out["active"], log_pf=out["log_pf"],
                log_pb_in=out["log_pb_in"], log_flow=out["log_flow"],
                prev_backward=out["prev"], states=out["states"], final_state=carry["final"],
                cond_features=cond_features)

  def chunk_grads(params, cond, res, g):
    """d/dparams of sum_(b,t valid) g_pf log_pf + g_pb log_pb_in + g_flow log_flow."""
    mask = res["mask"]
    flat = mask.reshape(-1)
    count = jnp.sum(flat, dtype=i32)
    ids = jnp.nonzero(flat, size=batch * steps + chunk, fill_value=0)[0].astype(i32)
    num_chunks = (count + chunk - 1) // chunk
    cond_features = res["cond_features"]

    def objective(p, k):
      sl = jax.lax.dynamic_slice(ids, (k * chunk,), (chunk,))
      ok = k * chunk + jnp.arange(chunk, dtype=i32) < count
      b, t = sl // steps, sl % steps
      state = jax.tree.map(lambda h: h[b, t], res["states"])
      cond_c = _gather_rows(cond, b)
      out = policy_fn(p, batch_apply(env.featurize, chunk, state, cond_c), cond_features[b])
      fmask = batch_apply(env.forward_mask, chunk, state, cond_c)
      log_pf_all = masked_log_softmax(out.forward_logits, fmask)
      lp = jnp.take_along_axis(log_pf_all, res["actions"][b, t][:, None], axis=-1)[:, 0]
      total = jnp.sum(jnp.where(ok, g["log_pf"][b, t] * lp, 0.0))
      if out.backward_logits is not None:
        bmask = batch_apply(env.backward_mask, chunk, state, cond_c)
        log_pb_all = masked_log_softmax(out.backward_logits, bmask)
        lpb = jnp.take_along_axis(log_pb_all, res["prev_backward"][b, t][:, None], axis=-1)[:, 0]
        total = total + jnp.sum(jnp.where(ok, g["log_pb_in"][b, t] * lpb, 0.0))
      if out.log_flow is not None:
        total = total + jnp.sum(jnp.where(ok, g["log_flow"][b, t] * out.log_flow.astype(F32),
                                          0.0))
      return total

    def body(k, acc):
      grads = jax.grad(objective)(params, k)
      return jax.tree.map(jnp.add, acc, grads)

    zero = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.fori_loop(0, num_chunks, body, zero)

  @jax.custom_vjp
  def core(params, key, cond, epsilon, temperature):
    return forward(params, key, cond, epsilon, temperature)

  def core_fwd(params, key, cond, epsilon, temperature):
    out = forward(params, key, cond, epsilon, temperature)
    res = {k: out[k] for k in ("mask", "actions", "prev_backward", "states", "cond_features")}
    return out, (params, cond, res)

  def core_bwd(saved, g):
    params, cond, res = saved
    grads = chunk_grads(params, cond, res, g)
    return (grads, None, jax.tree.map(lambda c: None, cond), None, None)

  core.defvjp(core_fwd, core_bwd)
  return core(params, key, cond, jnp.asarray(epsilon, F32), jnp.asarray(temperature, F32))


def _assemble(env: DAGEnv, batch: int, cond, cond_features, states, features, actions, mask,
              log_pf, log_pb_in, log_flow, final_state) -> Trajectories:
  """Trajectories from the per-step records [B, T, ...] and the terminal states."""
  steps = env.max_length
  lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
  log_rewards = batch_apply(env.log_reward, batch, final_state, cond).astype(F32)
  # The exit transition (the last valid step) has P_B = 1; the scan's last step has no successor.
  log_pb = jnp.concatenate([log_pb_in[:, 1:], jnp.zeros((batch, 1), F32)], axis=1)
  log_pb = jnp.where(mask, log_pb, 0.0)
  pos = jnp.arange(steps + 1)[None, :]
  flows = jnp.concatenate([log_flow, jnp.zeros((batch, 1), F32)], axis=1)
  log_flows = jnp.where(pos < lengths[:, None], flows,
                        jnp.where(pos == lengths[:, None], log_rewards[:, None], 0.0))
  states = jax.tree.map(lambda s, f: jnp.concatenate([s, f[:, None]], axis=1), states, final_state)
  final_features = batch_apply(env.featurize, batch, final_state, cond)
  features = jnp.concatenate([features, final_features[:, None]], axis=1)
  return Trajectories(states=states, features=features, cond=cond, cond_features=cond_features,
                      actions=actions, mask=mask, log_pf=log_pf, log_pb=log_pb,
                      log_flows=log_flows, log_rewards=log_rewards, terminal_states=final_state,
                      lengths=lengths)


def sample_trajectories(key: jax.Array, env: DAGEnv, policy_fn: PolicyFn, params, cond,
                        batch: int, epsilon=0.0, temperature=1.0,
                        active_buckets: int = 0, compact: int = 0,
                        compact_chunk: int = 0) -> Trajectories:
  """Samples `batch` complete trajectories in one `lax.scan` of `env.max_length` steps.

  Args:
    key: PRNG key.
    env: the (static) environment.
    policy_fn: `policy_fn(params, features [N, F], cond_features [N, C]) -> PolicyOutput`.
    params: the policy parameters (differentiable through the returned log-probs
      and log-flows).
    cond: conditioning pytree with leaves [batch, ...] (or `()`).
    batch: number of trajectories B.
    epsilon: probability of drawing the action uniformly among the valid ones.
    temperature: divides the logits of the sampling distribution.
      epsilon and temperature may be traced (annealed without recompiling);
      they change only which actions are drawn, never `log_pf`.
    active_buckets: how finished rows are handled (static). 0 (default): the network
      runs on all B rows at every one of the T steps; finished rows cost as much as
      live ones. n > 0: per step, the unfinished rows are gathered into the smallest
      of the buckets 0 (network skipped), B, B/2, ..., B/2^(n-1) rows that holds
      them, the network runs on that bucket only (`lax.switch`) and its outputs are
      scattered back. The bucketed call is rematerialised (`jax.checkpoint`): under
      `jax.grad` its forward is recomputed on the bucket in the backward pass,
      because storing the residuals of every switch branch costs more than the
      bucketing saves. Not for use under `vmap` (the switch becomes a select that
      runs every bucket). Results equal those of 0 up to float rounding.
    compact: n > 0 (static; overrides `active_buckets`): the shrinking-batch sampler.
      The batch is held in static row counts B, B(n-1)/n, ..., B/n (rounded up);
      whenever at most the next count of rows is unfinished they are gathered into
      that smaller array, so finished rows cost at most B/n rows per step. Its
      gradient (`jax.custom_vjp`) evaluates the policy once more, in chunks of
      `compact_chunk` rows (0: B), on exactly the visited (row, step) pairs and
      backpropagates through them: no per-step residuals, no switch. Same actions as
      0 and values up to float rounding. The policy must act row by row (each output
      row depends on its input row only), as every `PolicyFn` here does. Loops with
      data-dependent trip counts: under `vmap` they run the longest member's count.

  Returns:
    Trajectories (see the class) with T = env.max_length.
  """
  steps = env.max_length
  if compact > 0:
    out = _sample_compact(key, env, policy_fn, params, cond, batch, epsilon, temperature,
                          compact, compact_chunk if compact_chunk > 0 else batch)
    final_state = out["final_state"]
    mask = out["mask"]
    # Steps past the exit hold the terminal state, as in the plain sampler.
    states = jax.tree.map(
        lambda h, f: jnp.where(mask.reshape(mask.shape + (1,) * (h.ndim - 2)), h, f[:, None]),
        out["states"], final_state)
    flat = jax.tree.map(lambda s: s.reshape((batch * steps,) + s.shape[2:]), states)
    flat_cond = jax.tree.map(lambda c: jnp.repeat(c, steps, axis=0), cond)
    features = batch_apply(env.featurize, batch * steps, flat, flat_cond)
    features = features.reshape((batch, steps) + features.shape[1:])
    return _assemble(env, batch, cond, out["cond_features"], states, features, out["actions"],
                     mask, out["log_pf"], out["log_pb_in"], out["log_flow"], final_state)

  cond_features = batch_apply(env.cond_features, batch, cond)
  state0 = batch_apply(env.init, batch, cond)

  def network(features, active):
    if active_buckets > 0:
      return _policy_on_active(policy_fn, params, features, cond_features, active, active_buckets)
    return policy_fn(params, features, cond_features)

  def body(carry, key_t):
    state, prev_backward = carry
    active = jnp.logical_not(jax.vmap(env.is_terminal)(state))
    features = batch_apply(env.featurize, batch, state, cond)
    out = network(features, active)

    action, log_pf, log_pb_in, log_flow, next_state, backward = _transition(
        env, batch, out, state, cond, active, prev_backward, epsilon, temperature,
        lambda lp: jax.random.categorical(key_t, lp, axis=-1))
    ys = dict(state=state, features=features, action=action, active=active, log_pf=log_pf,
              log_pb_in=log_pb_in, log_flow=log_flow)
    return (next_state, backward), ys

  keys = jax.random.split(key, steps)
  init_carry = (state0, jnp.zeros((batch,), jnp.int32))
  (final_state, _), ys = jax.lax.scan(body, init_carry, keys)
  ys = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), ys)  # [B, T, ...]
  return _assemble(env, batch, cond, cond_features, ys["state"], ys["features"], ys["action"],
                   ys["active"], ys["log_pf"], ys["log_pb_in"], ys["log_flow"], final_state)


def sample_terminal_states(key: jax.Array, env: DAGEnv, policy_fn: PolicyFn, params, cond,
                           num: int, batch: int, epsilon=0.0, temperature=1.0):
  """Terminal states of `num` = k * `batch` trajectories, sampled in k scanned chunks.

  `cond` has leaves [batch, ...] (or is `()`); it is reused by every chunk.
  Returns the terminal state pytree with leaves [num, ...].
  """
  if num % batch:
    raise ValueError(f"sample_terminal_states: num={num} is not a multiple of batch={batch}")

  def chunk(_, k):
    traj = sample_trajectories(k, env, policy_fn, params, cond, batch, epsilon, temperature)
    return None, traj.terminal_states

  _, states = jax.lax.scan(chunk, None, jax.random.split(key, num // batch))
  return jax.tree.map(lambda s: s.reshape((num,) + s.shape[2:]), states)

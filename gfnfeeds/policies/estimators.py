"""Throughput estimators of the rule-based controllers, as pure functions over a fixed-size state.

Units follow the MMGC2022 code: a throughput sample is the size of the chunk
just downloaded over the delay of that action, RTT included, in MB/s:

    sample = (bytes / 1e6) / (delay_ms / 1000)

It is formed from the observation (`last_was_download`, `last_bytes`,
`last_delay_ms`), never from the environment's own history fields, so the
arithmetic is the reference's operation for operation (that matters: the
No-Save replay breaks MPC ties exactly as the plain-Python starter does).

Two estimators share one state (`EstimatorState`):

* harmonic mean of the last 5 samples, leading zeros (slots that never held
  a sample) ignored;
* RobustMPC (Yin et al. 2015, Pensieve's robust_mpc): the harmonic mean
  divided by 1 + the largest of the last 5 relative prediction errors, where
  the error of a sample C_t is |C_hat_{t-1} - C_t| / C_t and C_hat_{t-1} is the
  harmonic mean predicted before C_t arrived.

`robust_update` is the clean form (one error per new sample). `nosave_update`
replicates the No-Save baseline's bookkeeping (SIMULATOR.md Appendix A): one
decision with a target appends two errors and two estimates.

Everything is jittable and vmappable; the sums run in a fixed left-to-right
order (unrolled over the 5 slots) and divisions by constants use
`numerics.exact_div`, so float64 results equal the reference's bit for bit.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from gfnfeeds.env.environment import tree_select
from gfnfeeds.numerics import exact_div

WINDOW = 5  # samples and errors kept (RobustMPC and MMGC use 5)


@struct.dataclass
class EstimatorState:
  """Fixed-size estimator memory.

  Attributes:
    samples: float64 [5] throughput samples in MB/s, oldest first; 0 = no sample
      in that slot yet (the MMGC window starts as zeros).
    errors: float64 [5] the last 5 relative prediction errors, oldest first.
      Errors are >= 0, so the zero padding never changes their maximum: the
      max over this array equals MMGC's `max(errors[-5:])` over a shorter list.
    last_estimate: float64, the newest harmonic-mean estimate (valid if has_estimate).
    has_estimate: bool, whether any estimate was appended yet.
  """

  samples: jnp.ndarray
  errors: jnp.ndarray
  last_estimate: jnp.ndarray
  has_estimate: jnp.ndarray


def init_estimator() -> EstimatorState:
  """An empty estimator: no samples, no errors, no estimate."""
  return EstimatorState(samples=jnp.zeros((WINDOW,), jnp.float64),
                        errors=jnp.zeros((WINDOW,), jnp.float64),
                        last_estimate=jnp.zeros((), jnp.float64),
                        has_estimate=jnp.asarray(False))


def observed_sample(obs) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(sample MB/s, valid) of the previous action: valid iff it was a download.

  The first observation of a session has last_was_download False, so no
  sample is taken there. A zero delay cannot follow a download (the RTT alone
  is 80 ms) but is guarded so a degenerate env setting cannot produce inf.
  """
  delay_ms = jnp.asarray(obs.last_delay_ms, jnp.float64)
  valid = jnp.logical_and(obs.last_was_download, delay_ms > 0)
  sample = exact_div(obs.last_bytes, 1e6) / exact_div(jnp.where(valid, delay_ms, 1.0), 1000.0)
  return jnp.where(valid, sample, 0.0), valid


def push_sample(state: EstimatorState, sample, valid) -> EstimatorState:
  """Shifts the sample window left and appends `sample`, where `valid`."""
  shifted = jnp.append(state.samples[1:], sample)
  return state.replace(samples=jnp.where(valid, shifted, state.samples))


def _push_error(errors, error):
  return jnp.append(errors[1:], error)


def has_samples(state: EstimatorState) -> jnp.ndarray:
  """Whether the window holds at least one (non-zero) sample."""
  return jnp.any(state.samples != 0)


def harmonic_mean(samples) -> jnp.ndarray:
  """Harmonic mean of `samples` [5] after dropping leading zeros (MMGC's rule).

  Computed as 1 / (sum(1/x) / n) with the sum taken left to right, exactly as
  the reference. Zeros after the first sample (impossible in practice: a
  sample is bytes/delay > 0) would be skipped too. Returns 0 when there is no
  sample; callers check `has_samples` (the reference would raise there).
  """
  started = jnp.zeros((), bool)
  total = jnp.zeros((), jnp.float64)
  count = jnp.zeros((), jnp.float64)
  for i in range(samples.shape[-1]):  # unrolled: a fixed summation order
    x = samples[i]
    started = jnp.logical_or(started, x != 0)
    use = jnp.logical_and(started, x != 0)
    total = total + jnp.where(use, 1.0 / jnp.where(use, x, 1.0), 0.0)
    count = count + use
  return jnp.where(count > 0, 1.0 / (total / jnp.maximum(count, 1.0)), 0.0)


def _relative_error(state: EstimatorState, newest):
  """|last estimate - newest| / newest, 0 without an estimate or a sample."""
  ok = jnp.logical_and(state.has_estimate, newest != 0)
  return jnp.where(ok, jnp.abs(state.last_estimate - newest) / jnp.where(ok, newest, 1.0), 0.0)


def _append_estimate(state: EstimatorState) -> tuple[EstimatorState, jnp.ndarray]:
  """Appends the error of the newest sample against the last estimate, then a new estimate."""
  newest = state.samples[-1]
  errors = _push_error(state.errors, _relative_error(state, newest))
  h = harmonic_mean(state.samples)
  return state.replace(errors=errors, last_estimate=h, has_estimate=jnp.asarray(True)), h


def robust_bandwidth(state: EstimatorState) -> jnp.ndarray:
  """RobustMPC estimate (MB/s) from the current state: estimate / (1 + max last 5 errors)."""
  return state.last_estimate / (1.0 + jnp.max(state.errors))


def robust_update(state: EstimatorState, sample, valid) -> EstimatorState:
  """Clean RobustMPC bookkeeping: one error and one estimate per new sample.

  Where `valid`, appends the sample, records the error of the previous
  estimate against it (0 for the first sample) and the new harmonic mean.
  Decisions that follow a sleep add nothing, so a policy that sleeps often
  (PDAS, 50 ms) does not flood the error window with repeats.
  """
  pushed = push_sample(state, sample, valid)
  updated, _ = _append_estimate(pushed)
  return tree_select(valid, updated, state)


def nosave_update(state: EstimatorState) -> tuple[EstimatorState, jnp.ndarray]:
  """No-Save's double append (SIMULATOR.md Appendix A); returns (state, robust MB/s).

  Call once per decision that has a download target, after `push_sample`:
    1. e1 = 0 if no estimate yet or the newest sample is 0, else
       |last estimate - newest| / newest; append e1; append h (harmonic mean);
    2. e2 = |h - newest| / newest; append e2; append h again;
       robust = h / (1 + max of the last 5 errors).
  """
  state, _ = _append_estimate(state)
  state, h = _append_estimate(state)
  return state, h / (1.0 + jnp.max(state.errors))


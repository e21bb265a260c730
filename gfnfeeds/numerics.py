"""Float64 arithmetic that matches plain Python operation for operation.

XLA's algebraic simplifier rewrites a division whose divisor is a broadcast,
A / broadcast(b), into A * broadcast(1 / b). That covers a division by a
constant (x / 1000) and, once vmapped, a division of an array by a per-session
scalar (chunk sizes / bandwidth). The product with the rounded reciprocal can
differ from the correctly rounded quotient in the last bit
(4850 / 1000 = 4.85 but 4850 * (1 / 1000) = 4.8500000000000005), and the
reference starters break near-ties of their MPC rewards on such bits.

`exact_div` makes the divisor an elementwise array, divisor + 0 * x, which is
not a broadcast, so the compiled program keeps a true IEEE division. (XLA does
not fold 0 * x for floats: it would change inf and NaN.) The parity tests
against the plain-Python starters guard this.

XLA's CPU backend also contracts a multiply feeding an add into one fused
multiply-add (one rounding instead of two) wherever both land in the same
kernel, and which ones do depends on how the surrounding program is fused. A
value accumulated as `total + a * b` can then differ in its last bit between
two programs that compute the same step (vmap(step) and a batched step, say),
and from plain Python. `exact_mul` rounds the product on its own, so the sum
that follows is the same plain-Python sum in every program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def exact_div(x, divisor):
  """x / divisor, correctly rounded elementwise even under jit and vmap.

  Args:
    x: float64 array (the dividend; finite where the result is used).
    divisor: a constant or an array broadcastable to x.
  """
  x = jnp.asarray(x, jnp.float64)
  return x / (divisor + 0.0 * x)


def exact_mul(x, y):
  """x * y rounded on its own (never fused into a following add), elementwise.

  Use it for products that are then added to an accumulator or compared, where
  the result must not depend on how XLA fuses the program (module docstring).
  """
  return exact_div(jnp.asarray(x, jnp.float64) * y, 1.0)


def prefix_count(mask, axis: int = -1):
  """int32: inclusive running count of True along `axis` (jnp.cumsum of a bool array).

  A log-depth associative scan: XLA's CPU cumsum is a reduce-window, several
  times slower at the sizes of a batch (BUILD_NOTES.md, environment speed).
  Integer sums, so the result is exactly cumsum's.
  """
  return jax.lax.associative_scan(jnp.add, jnp.asarray(mask).astype(jnp.int32), axis=axis)


def top_k(x, k: int):
  """(values, indices int32) of the k largest entries along the last axis: `lax.top_k`'s result.

  Bit for bit the values and indices of `jax.lax.top_k`, which orders floats
  totally (-NaN < -inf < ... < -0.0 < +0.0 < ... < inf < NaN) and puts the lower
  index first among equal entries. Computed as k rounds (a scan) of a max and
  a min-index over the entries not taken yet, on integer keys with that total
  order. Why: XLA's CPU backend runs `lax.top_k` with its fast TopK kernel only
  in some programs; in others (always for float64) it sorts the whole last
  axis. In `sample_distinct_plans`'s program it sorted, and these k rounds
  took about a quarter of the time (BUILD_NOTES.md, section 6i). Where the
  kernel is used (the beam search's top_k), it stays the faster choice.

  Args:
    x: float array [..., n] (16, 32 or 64 bits).
    k: static, 0 <= k <= n.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"top_k: x must be a float array, got {x.dtype}")
  n = x.shape[-1]
  if not 0 <= k <= n:
    raise ValueError(f"top_k: k must be in [0, {n}] (the size of the last axis), got {k}")
  int_type = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, int_type)
  # Negative floats: flip the magnitude bits, so a larger magnitude is a smaller key.
  key = jnp.where(bits < 0, bits ^ jnp.iinfo(int_type).max, bits)
  lowest = jnp.iinfo(int_type).min
  iota = jnp.arange(n, dtype=jnp.int32)

  def take_largest(taken, _):
    masked = jnp.where(taken, lowest, key)
    best = jnp.max(masked, axis=-1, keepdims=True)
    # Some entry not taken yet always attains `best` (taken ones sit at the lowest key).
    index = jnp.min(jnp.where((masked == best) & ~taken, iota, n), axis=-1)
    return taken | (iota == index[..., None]), index

  # A scan, not an unrolled loop: the program's size does not grow with k.
  _, indices = jax.lax.scan(take_largest, jnp.zeros(x.shape, bool), None, length=k)
  indices = jnp.moveaxis(indices, 0, -1)  # int32: the iota's type
  return jnp.take_along_axis(x, indices, axis=-1), indices

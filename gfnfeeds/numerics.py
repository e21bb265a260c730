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

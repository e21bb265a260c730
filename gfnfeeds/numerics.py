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
"""

from __future__ import annotations

import jax.numpy as jnp


def exact_div(x, divisor):
  """x / divisor, correctly rounded elementwise even under jit and vmap.

  Args:
    x: float64 array (the dividend; finite where the result is used).
    divisor: a constant or an array broadcastable to x.
  """
  x = jnp.asarray(x, jnp.float64)
  return x / (divisor + 0.0 * x)

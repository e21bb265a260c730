"""Float64 arithmetic that matches plain Python operation for operation.

XLA's algebraic simplifier rewrites a division by a constant, x / 1000, into a
multiplication by its rounded reciprocal, x * 0.001, which can differ from the
correctly rounded quotient in the last bit (4850 / 1000 = 4.85 but
4850 * 0.001 = 4.8500000000000005). The reference starters break near-ties of
their MPC rewards on such last bits, so every division by a constant on an
exact-replay path goes through `exact_div`: the divisor passes an
optimization barrier, the simplifier cannot see that it is a constant, and
the compiled program keeps a true IEEE division.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def exact_div(x, divisor):
  """x / divisor as an IEEE float64 division even when `divisor` is a compile-time constant."""
  return x / jax.lax.optimization_barrier(jnp.asarray(divisor, jnp.float64))

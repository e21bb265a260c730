"""Flax policies for the GFlowNet core.

A policy function has the signature
`policy_fn(params, features [B, F], cond_features [B, C]) -> PolicyOutput` and
returns, for every row, the forward logits, optionally the backward logits and
log F(s). `MLPPolicy.apply` is one. Everything is float32 whatever JAX's x64
mode (gfnfeeds enables it for the simulator).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

F32 = jnp.float32


@struct.dataclass
class PolicyOutput:
  """Network outputs for a batch of states.

  Attributes:
    forward_logits: float32 [..., num_actions], unmasked.
    backward_logits: float32 [..., num_backward_actions], unmasked; None for a uniform P_B.
    log_flow: float32 [...] log F(s); None without a flow head.
  """

  forward_logits: jax.Array
  backward_logits: Optional[jax.Array] = None
  log_flow: Optional[jax.Array] = None


_ACTIVATIONS = {"relu": nn.relu, "leaky_relu": nn.leaky_relu, "elu": nn.elu, "gelu": nn.gelu}


class MLP(nn.Module):
  """Dense layers of the given widths, each followed by the activation (no output layer)."""

  hidden: Sequence[int]
  activation: str = "relu"

  @nn.compact
  def __call__(self, x):
    act = _ACTIVATIONS[self.activation]
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, dtype=F32, param_dtype=F32, name=f"dense_{i}")(x))
    return x


class LogZ(nn.Module):
  """log Z(cond): a scalar parameter when cond has no features, else an MLP on them."""

  hidden: Sequence[int] = (64,)
  activation: str = "relu"

  @nn.compact
  def __call__(self, cond_features):
    cond_features = cond_features.astype(F32)
    batch_shape = cond_features.shape[:-1]
    if cond_features.shape[-1] == 0:
      log_z = self.param("value", nn.initializers.zeros, (), F32)
      return jnp.broadcast_to(log_z, batch_shape)
    h = MLP(self.hidden, self.activation, name="mlp")(cond_features)
    return nn.Dense(1, dtype=F32, param_dtype=F32, name="out")(h)[..., 0]


class MLPPolicy(nn.Module):
  """A shared MLP trunk on [state features, cond features] with GFlowNet heads.

  Heads: forward logits (always), backward logits (when `num_backward_actions`
  > 0; otherwise P_B is uniform), log F(s) (when `flow_head`). The log Z head
  is a separate network on the cond features only (`log_z` method); its
  parameters live under the top-level name "log_z" so an optimizer can give
  them their own learning rate (see `gfnfeeds.gfn.train.make_optimizer`).

  Initialise with `model.init(key, features, cond_features, method=MLPPolicy.init_all)`
  so that every head, log Z included, gets parameters.
  """

  num_actions: int
  num_backward_actions: int = 0
  hidden: Sequence[int] = (256, 256)
  flow_head: bool = False
  activation: str = "relu"
  log_z_hidden: Sequence[int] = (64,)

  def setup(self):
    self.trunk = MLP(self.hidden, self.activation)
    self.forward_head = nn.Dense(self.num_actions, dtype=F32, param_dtype=F32)
    if self.num_backward_actions > 0:
      self.backward_head = nn.Dense(self.num_backward_actions, dtype=F32, param_dtype=F32)
    if self.flow_head:
      self.flow = nn.Dense(1, dtype=F32, param_dtype=F32)
    self.log_z_net = LogZ(self.log_z_hidden, self.activation, name="log_z")

  def __call__(self, features, cond_features) -> PolicyOutput:
    x = jnp.concatenate([features.astype(F32), cond_features.astype(F32)], axis=-1)
    h = self.trunk(x)
    return PolicyOutput(
        forward_logits=self.forward_head(h),
        backward_logits=self.backward_head(h) if self.num_backward_actions > 0 else None,
        log_flow=self.flow(h)[..., 0] if self.flow_head else None)

  def log_z(self, cond_features) -> jax.Array:
    """float32 [...]: log Z(cond) for cond features [..., C]."""
    return self.log_z_net(cond_features)

  def init_all(self, features, cond_features):
    return self(features, cond_features), self.log_z(cond_features)

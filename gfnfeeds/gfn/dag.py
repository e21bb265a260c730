"""The functional DAG-environment interface of the GFlowNet core.

A GFlowNet samples an object x by a sequence of forward actions from a source
state s0 through a DAG of states; the last action of every trajectory is the
exit action, which moves x to the sink sf. A `DAGEnv` describes that DAG with
pure functions of ONE state (the sampler vmaps them over the batch), in the
style of `gfnfeeds.env.environment`: the (frozen, hashable) environment object
holds only the static, shape-defining settings, so it can be a static argument
of `jax.jit`; everything else lives in the state pytree or in `cond`.

Conventions every subclass must honour:
  * Forward actions are `0 .. num_actions - 1`; the exit action is the last one,
    `num_actions - 1`. Backward actions are `0 .. num_backward_actions - 1` and
    never include the exit: a backward action undoes one non-exit forward action.
  * After the exit action the state is terminal (`is_terminal` true); it still
    holds the object x (so `log_reward` reads it). The sampler never steps a
    terminal state and never asks for its masks or backward policy.
  * Every trajectory has at most `max_length` forward actions, the exit
    included: after `max_length - 1` non-exit actions `forward_mask` allows only
    the exit. The sampler relies on this to use static shapes.
  * `cond` is the conditioning variable (any pytree; `()` when there is none),
    one trajectory's worth (no batch axis). It is passed to every method that
    may depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

State = Any
Cond = Any


@dataclasses.dataclass(frozen=True)
class DAGEnv:
  """Base class of GFlowNet environments (subclasses are frozen dataclasses).

  Subclasses define the four static sizes below (as properties or fields) and
  the pure methods. `backward_step` and `forward_action` (parent enumeration)
  are only needed by the flow-matching loss.
  """

  @property
  def max_length(self) -> int:
    """The most forward actions in one trajectory, exit included."""
    raise NotImplementedError

  @property
  def num_actions(self) -> int:
    """Number of forward actions, the exit (last index) included."""
    raise NotImplementedError

  @property
  def num_backward_actions(self) -> int:
    """Number of backward actions (no exit)."""
    raise NotImplementedError

  @property
  def feature_dim(self) -> int:
    """Length of `featurize(state, cond)`."""
    raise NotImplementedError

  @property
  def exit_action(self) -> int:
    return self.num_actions - 1

  def init(self, cond: Cond) -> State:
    """The source state s0 of a trajectory conditioned on `cond`."""
    raise NotImplementedError

  def forward_mask(self, state: State, cond: Cond) -> jax.Array:
    """bool [num_actions]: the forward actions allowed in a non-terminal `state`."""
    raise NotImplementedError

  def backward_mask(self, state: State, cond: Cond) -> jax.Array:
    """bool [num_backward_actions]: the backward actions allowed in a non-terminal `state`.

    All false at s0 (no parent).
    """
    raise NotImplementedError

  def step(self, state: State, action: jax.Array, cond: Cond) -> State:
    """The child of a non-terminal `state` by a valid forward `action` (terminal after the exit)."""
    raise NotImplementedError

  def backward_action(self, state: State, action: jax.Array, cond: Cond) -> jax.Array:
    """int32: the backward action, in the child `step(state, action)`, that leads back to `state`.

    Only read for non-exit actions: the exit transition has P_B = 1.
    """
    raise NotImplementedError

  def is_terminal(self, state: State) -> jax.Array:
    """bool: whether `state` has exited (the trajectory is complete)."""
    raise NotImplementedError

  def log_reward(self, state: State, cond: Cond) -> jax.Array:
    """float32: log R(x | cond) of the object x held by a terminal `state`."""
    raise NotImplementedError

  def featurize(self, state: State, cond: Cond) -> jax.Array:
    """float32 [feature_dim]: the network input of a state."""
    raise NotImplementedError

  def cond_features(self, cond: Cond) -> jax.Array:
    """float32 [C]: the network input of `cond` (C = 0 when `cond` has no leaves).

    Default: the leaves of `cond`, flattened and concatenated.
    """
    leaves = [jnp.ravel(jnp.asarray(x, jnp.float32)) for x in jax.tree.leaves(cond)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,), jnp.float32)

  def backward_step(self, state: State, backward_action: jax.Array, cond: Cond) -> State:
    """The parent of a non-terminal `state` by a valid `backward_action`."""
    raise NotImplementedError

  def forward_action(self, state: State, backward_action: jax.Array, cond: Cond) -> jax.Array:
    """int32: the forward action from `backward_step(state, backward_action, cond)` to `state`."""
    raise NotImplementedError

  @property
  def name(self) -> str:
    return type(self).__name__


def batch_apply(fn, batch: int, *args):
  """`jax.vmap(fn)(*args)` over a leading axis of size `batch` of every argument.

  Unlike a bare `jax.vmap`, this also works when every argument is an empty
  pytree (an unconditioned environment's `cond = ()`); such arguments are
  passed through unbatched.
  """
  return jax.vmap(lambda _, *a: fn(*a))(jnp.arange(batch), *args)

"""HyperGrid (Bengio et al., NeurIPS 2021), the standard GFlowNet test bed, as a DAGEnv.

States are points x in {0, ..., H-1}^D, starting at the origin. Forward actions
0..D-1 increment one coordinate (invalid at H-1), action D exits. Backward
action d decrements coordinate d. A trajectory has at most D(H-1) + 1 actions.

Reward (the "original" reward of the paper and of torchgfn's HyperGrid), with
a_d = |x_d / (H-1) - 1/2|:

  R(x) = R0 + R1 * prod_d 1[0.25 < a_d <= 0.5] + R2 * prod_d 1[0.3 < a_d < 0.4]

with R0 = 0.1 (1e-3 in the hard variant), R1 = 0.5, R2 = 2.0. a_d <= 0.5 always
holds, so the R1 term marks the band near the borders and the R2 term a thinner
band inside it. The comparisons are evaluated exactly in integers
(a_d = |2 x_d - (H-1)| / (2 (H-1))), so no float rounding moves a point on a
band edge (e.g. H = 5, a_d = 0.25 exactly, which is outside the R1 band).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gfnfeeds.gfn.dag import DAGEnv
from gfnfeeds.gfn.sampling import masked_log_softmax

F32 = jnp.float32


@struct.dataclass
class GridState:
  """pos: int32 [D] coordinates; done: bool, true once the exit action was taken."""

  pos: jax.Array
  done: jax.Array


def _reward_np(pos: np.ndarray, height: int, r0: float, r1: float, r2: float) -> np.ndarray:
  """R(x) for integer coordinates [..., D], float64 (the exact reference)."""
  h1 = height - 1
  dev = np.abs(2 * pos.astype(np.int64) - h1)  # a_d * 2 (H-1)
  band1 = np.all(2 * dev > h1, axis=-1)  # a_d > 1/4
  band2 = np.all((5 * dev > 3 * h1) & (5 * dev < 4 * h1), axis=-1)  # 0.3 < a_d < 0.4
  return r0 + r1 * band1 + r2 * band2


@dataclasses.dataclass(frozen=True)
class HyperGrid(DAGEnv):
  """The D-dimensional hypergrid of side H with the standard reward (module docstring)."""

  ndim: int = 2
  height: int = 8
  R0: float = 0.1
  R1: float = 0.5
  R2: float = 2.0

  @property
  def max_length(self) -> int:
    return self.ndim * (self.height - 1) + 1

  @property
  def num_actions(self) -> int:
    return self.ndim + 1

  @property
  def num_backward_actions(self) -> int:
    return self.ndim

  @property
  def feature_dim(self) -> int:
    return self.ndim * self.height

  @property
  def num_states(self) -> int:
    return self.height ** self.ndim

  def init(self, cond=()) -> GridState:
    del cond
    return GridState(pos=jnp.zeros((self.ndim,), jnp.int32), done=jnp.asarray(False))

  def forward_mask(self, state: GridState, cond=()) -> jax.Array:
    del cond
    return jnp.concatenate([state.pos < self.height - 1, jnp.ones((1,), bool)])

  def backward_mask(self, state: GridState, cond=()) -> jax.Array:
    del cond
    return state.pos > 0

  def step(self, state: GridState, action, cond=()) -> GridState:
    del cond
    is_exit = action == self.exit_action
    increment = jnp.logical_and(jnp.arange(self.ndim, dtype=jnp.int32) == action,
                                jnp.logical_not(is_exit))
    return GridState(pos=state.pos + increment.astype(jnp.int32),
                     done=jnp.logical_or(state.done, is_exit))

  def backward_action(self, state: GridState, action, cond=()) -> jax.Array:
    del state, cond
    return jnp.asarray(action, jnp.int32)

  def backward_step(self, state: GridState, backward_action, cond=()) -> GridState:
    del cond
    decrement = (jnp.arange(self.ndim, dtype=jnp.int32) == backward_action).astype(jnp.int32)
    return GridState(pos=state.pos - decrement, done=jnp.asarray(False))

  def forward_action(self, state: GridState, backward_action, cond=()) -> jax.Array:
    del state, cond
    return jnp.asarray(backward_action, jnp.int32)

  def is_terminal(self, state: GridState) -> jax.Array:
    return state.done

  def reward(self, pos: jax.Array) -> jax.Array:
    """float32 R(x) for integer coordinates [..., D]."""
    h1 = self.height - 1
    dev = jnp.abs(2 * pos.astype(jnp.int32) - h1)
    band1 = jnp.all(2 * dev > h1, axis=-1)
    band2 = jnp.all(jnp.logical_and(5 * dev > 3 * h1, 5 * dev < 4 * h1), axis=-1)
    return (self.R0 + self.R1 * band1.astype(F32) + self.R2 * band2.astype(F32)).astype(F32)

  def log_reward(self, state: GridState, cond=()) -> jax.Array:
    del cond
    return jnp.log(self.reward(state.pos))

  def featurize(self, state: GridState, cond=()) -> jax.Array:
    """The concatenated one-hot encodings of the D coordinates, float32 [D * H]."""
    del cond
    # int32 comparisons (jax.nn.one_hot would compare in int64 under x64).
    levels = jnp.arange(self.height, dtype=jnp.int32)
    return (state.pos.astype(jnp.int32)[:, None] == levels).astype(F32).reshape(-1)

  # Enumeration (the grid is small enough to list every state).

  def all_positions(self) -> np.ndarray:
    """int32 [H^D, D]: every grid point, in row-major (np.ravel_multi_index) order."""
    grids = np.meshgrid(*[np.arange(self.height)] * self.ndim, indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=-1).astype(np.int32)

  def exact_distribution(self) -> np.ndarray:
    """float64 [H]*D: the target R(x) / sum_x R(x)."""
    r = _reward_np(self.all_positions(), self.height, self.R0, self.R1, self.R2)
    return (r / r.sum()).reshape((self.height,) * self.ndim)

  def empirical_distribution(self, terminal_states) -> jax.Array:
    """float32 [H]*D: the frequency of each grid point among terminal states.

    Accepts a GridState with pos [N, D] or the coordinates [N, D] themselves.
    """
    pos = terminal_states.pos if isinstance(terminal_states, GridState) else terminal_states
    pos = jnp.asarray(pos).reshape(-1, self.ndim)
    flat = jnp.ravel_multi_index(tuple(pos.T), (self.height,) * self.ndim, mode="clip")
    counts = jnp.bincount(flat, length=self.num_states).astype(F32)
    return (counts / pos.shape[0]).reshape((self.height,) * self.ndim)

  def policy_distribution(self, policy_fn, params, cond=()) -> jax.Array:
    """float32 [H]*D: the exact terminal distribution of a policy's forward P_F.

    P(reach x) is propagated through the DAG level by level (one network call on
    all H^D states), and P(x) = P(reach x) P_F(exit | x). No sampling noise.
    `cond` is one trajectory's conditioning (no batch axis).
    """
    positions = jnp.asarray(self.all_positions())
    states = GridState(pos=positions, done=jnp.zeros((self.num_states,), bool))
    feats = jax.vmap(lambda s: self.featurize(s, cond))(states)
    cfeats = jnp.broadcast_to(self.cond_features(cond), (self.num_states,) +
                              self.cond_features(cond).shape)
    logits = policy_fn(params, feats, cfeats).forward_logits
    masks = jax.vmap(lambda s: self.forward_mask(s, cond))(states)
    probs = jnp.exp(masked_log_softmax(logits, masks)).reshape((self.height,) * self.ndim + (-1,))
    shape = (self.height,) * self.ndim
    source = jnp.zeros(shape, F32).at[(0,) * self.ndim].set(1.0)

    def level(reach, _):
      inflow = source
      for d in range(self.ndim):
        out = reach * probs[..., d]  # zero at the upper border (masked)
        pad = [(0, 0)] * self.ndim
        pad[d] = (1, 0)
        inflow = inflow + jnp.pad(jax.lax.slice_in_dim(out, 0, self.height - 1, axis=d), pad)
      return inflow, None

    reach, _ = jax.lax.scan(level, source, None, length=self.max_length)
    return reach * probs[..., self.ndim]


def total_variation(p, q) -> float:
  """Total variation distance 1/2 sum |p - q| between two distributions of the same shape."""
  return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def grid_modes(env: HyperGrid) -> list[tuple[int, ...]]:
  """The points with the maximal reward (for diagnostics)."""
  r = _reward_np(env.all_positions(), env.height, env.R0, env.R1, env.R2)
  best = env.all_positions()[r == r.max()]
  return [tuple(int(v) for v in p) for p in best]


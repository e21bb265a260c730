"""On-policy GFlowNet training: one forward pass per step serves sampling and the loss.

The loss function samples the batch itself with the current parameters
(`sample_trajectories` inside `jax.value_and_grad`), so the network output that
chose each action is also the one differentiated: no second forward pass over
stored states, no stored log-probs gone stale. Exploration (epsilon,
temperature) only changes which actions are drawn; the loss always uses the
policy's own log-probabilities (off-policy training is valid for TB, DB, SubTB
and FM). log Z has its own learning rate (optax.multi_transform). `train` fuses
all updates in one `lax.scan` (PureJaxRL style) and is vmappable over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from gfnfeeds.gfn import losses
from gfnfeeds.gfn.dag import DAGEnv
from gfnfeeds.gfn.networks import MLPPolicy
from gfnfeeds.gfn.sampling import sample_trajectories

F32 = jnp.float32
LOSSES = ("tb", "db", "subtb", "fm")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything `train` needs (hashable: a static argument of jit).

  Attributes:
    env: the environment.
    loss: "tb", "db", "subtb" or "fm".
    hidden: MLP trunk widths.
    activation: "relu", "leaky_relu", "elu" or "gelu".
    backward_policy: "learned" (a backward head) or "uniform" (ignored by FM).
    batch: trajectories per update.
    num_steps: updates.
    learning_rate: Adam step size of the network.
    log_z_learning_rate: Adam step size of the log Z head.
    epsilon, temperature: exploration of the sampling policy.
    lamda: SubTB's lambda.
    active_buckets: see `sample_trajectories`.
    compact, compact_chunk: the shrinking-batch sampler and its gradient chunk (see
      `sample_trajectories`); compact > 0 overrides active_buckets.
    cond_fn: `cond_fn(key, batch) -> cond` (leaves [batch, ...]) draws the conditioning
      of each update's trajectories (a module-level function, so the config stays
      hashable); None for an unconditioned environment (cond = ()).
  """

  env: DAGEnv
  loss: str = "tb"
  hidden: tuple[int, ...] = (256, 256)
  activation: str = "relu"
  backward_policy: str = "learned"
  batch: int = 512
  num_steps: int = 1000
  learning_rate: float = 1e-3
  log_z_learning_rate: float = 1e-1
  epsilon: float = 0.0
  temperature: float = 1.0
  lamda: float = 0.9
  active_buckets: int = 0
  cond_fn: Optional[Callable[[jax.Array, int], Any]] = None
  compact: int = 0
  compact_chunk: int = 0


@struct.dataclass
class TrainState:
  params: Any
  opt_state: Any
  step: jax.Array


def make_model(env: DAGEnv, loss: str, hidden=(256, 256), activation: str = "relu",
               backward_policy: str = "learned") -> MLPPolicy:
  """The MLPPolicy with the heads `loss` uses: a flow head but for TB, no backward head for FM."""
  if loss not in LOSSES:
    raise ValueError(f"unknown GFlowNet loss {loss!r}; expected one of {LOSSES}")
  if backward_policy not in ("learned", "uniform"):
    raise ValueError(f"backward_policy must be 'learned' or 'uniform', got {backward_policy!r}")
  learned_pb = backward_policy == "learned" and loss != "fm"
  return MLPPolicy(num_actions=env.num_actions,
                   num_backward_actions=env.num_backward_actions if learned_pb else 0,
                   hidden=tuple(hidden), flow_head=loss != "tb", activation=activation)


def _param_labels(params):
  """'log_z' for the parameters of the log Z head, 'network' for the rest."""
  def label(path, _):
    names = [getattr(p, "key", None) for p in path]
    return "log_z" if "log_z" in names else "network"
  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(learning_rate: float = 1e-3, log_z_learning_rate: float = 1e-1):
  """Adam on the network and, with its own step size, on the log Z head."""
  return optax.multi_transform({"network": optax.adam(learning_rate),
                                "log_z": optax.adam(log_z_learning_rate)}, _param_labels)


def init_train_state(key: jax.Array, env: DAGEnv, model: MLPPolicy, optimizer,
                     cond_example=()) -> TrainState:
  """Parameters (every head, log Z included) and optimizer state.

  `cond_example` is one trajectory's conditioning (shapes only matter).
  """
  state0 = env.init(cond_example)
  features = env.featurize(state0, cond_example)[None]
  cond_features = env.cond_features(cond_example)[None]
  params = model.init(key, features, cond_features, method=MLPPolicy.init_all)
  return TrainState(params=params, opt_state=optimizer.init(params),
                    step=jnp.zeros((), jnp.int32))


def make_loss_fn(env: DAGEnv, model: MLPPolicy, loss_name: str, batch: int, epsilon=0.0,
                 temperature=1.0, lamda: float = 0.9,
                 cond_fn: Optional[Callable[[jax.Array, int], Any]] = None,
                 active_buckets: int = 0, compact: int = 0, compact_chunk: int = 0):
  """`loss_fn(params, key) -> (loss, diagnostics)`: samples a batch with `params`, scores it.

  `cond_fn(key, batch)` draws the conditioning (leaves [batch, ...]); None means `()`.
  """
  if loss_name not in LOSSES:
    raise ValueError(f"unknown GFlowNet loss {loss_name!r}; expected one of {LOSSES}")

  def loss_fn(params, key):
    key_cond, key_sample = jax.random.split(key)
    cond = cond_fn(key_cond, batch) if cond_fn is not None else ()
    traj = sample_trajectories(key_sample, env, model.apply, params, cond, batch, epsilon,
                               temperature, active_buckets, compact, compact_chunk)
    if loss_name == "tb":
      log_z = model.apply(params, traj.cond_features, method=MLPPolicy.log_z)
      return losses.trajectory_balance(traj, log_z)
    if loss_name == "db":
      return losses.detailed_balance(traj)
    if loss_name == "subtb":
      return losses.subtrajectory_balance(traj, lamda)
    inflows = losses.parent_log_inflows(env, model.apply, params, traj)
    return losses.flow_matching(traj, inflows)

  return loss_fn


def make_train_step(env: DAGEnv, model: MLPPolicy, loss_name: str, optimizer, batch: int,
                    epsilon=0.0, temperature=1.0, lamda: float = 0.9,
                    cond_fn: Optional[Callable[[jax.Array, int], Any]] = None,
                    active_buckets: int = 0, jit: bool = True, compact: int = 0,
                    compact_chunk: int = 0):
  """`train_step(train_state, key) -> (train_state, metrics)`: sample, loss, one optimizer update.

  Metrics are float32 scalars: the loss diagnostics plus `grad_norm`.
  Returned jitted unless `jit=False` (it is pure either way).
  """
  loss_fn = make_loss_fn(env, model, loss_name, batch, epsilon, temperature, lamda, cond_fn,
                         active_buckets, compact, compact_chunk)

  def train_step(train_state: TrainState, key: jax.Array):
    (_, diagnostics), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params, key)
    updates, opt_state = optimizer.update(grads, train_state.opt_state, train_state.params)
    params = optax.apply_updates(train_state.params, updates)
    metrics = dict(diagnostics, grad_norm=optax.tree.norm(grads))
    metrics = jax.tree.map(lambda m: jnp.asarray(m, F32), metrics)
    return TrainState(params=params, opt_state=opt_state, step=train_state.step + 1), metrics

  return jax.jit(train_step) if jit else train_step


@functools.partial(jax.jit, static_argnums=1)
def train(key: jax.Array, config: TrainConfig):
  """`config.num_steps` updates fused in one `lax.scan`; returns `(params, metrics)`.

  metrics: dict of float32 [num_steps] arrays. Vmappable over seeds:
  `jax.vmap(lambda k: train(k, config))(keys)` (with `active_buckets=0`).
  """
  model = make_model(config.env, config.loss, config.hidden, config.activation,
                     config.backward_policy)
  optimizer = make_optimizer(config.learning_rate, config.log_z_learning_rate)
  key_init, key_cond, key_train = jax.random.split(key, 3)
  cond_example = (() if config.cond_fn is None
                  else jax.tree.map(lambda c: c[0], config.cond_fn(key_cond, 1)))
  state = init_train_state(key_init, config.env, model, optimizer, cond_example)
  step = make_train_step(config.env, model, config.loss, optimizer, config.batch, config.epsilon,
                         config.temperature, config.lamda, config.cond_fn,
                         config.active_buckets, jit=False, compact=config.compact,
                         compact_chunk=config.compact_chunk)
  state, metrics = jax.lax.scan(step, state, jax.random.split(key_train, config.num_steps))
  return state.params, metrics

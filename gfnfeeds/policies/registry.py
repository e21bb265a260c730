"""Policies by name: `make_policy(name, env, **kwargs)` for rules, `load_policy` for all.

Learned controllers come with parameters: `load_policy(name, env, checkpoint=...)`
returns `(policy, policy_params)` for every name (rules get `()`), which is what
`gfnfeeds.evaluation.run_sessions` takes.
"""

from __future__ import annotations

from pathlib import Path

from gfnfeeds.policies.base import Policy
from gfnfeeds.policies.oracle import ClairvoyantOracle
from gfnfeeds.policies.random_shooting import RandomShootingMPC
from gfnfeeds.policies.rules import FixedPreload, MpcFixedPreload, NoSave, Pdas, PdasPersonalized

RULE_POLICIES = {
    "no_save": NoSave,
    "fixed_preload": FixedPreload,
    "mpc_fixed_preload": MpcFixedPreload,
    "pdas": Pdas,
    "pdas_w": PdasPersonalized,
    # References without training (SYSTEM.md section 7): the GFlowNet's planner with random
    # plans, and the clairvoyant oracle, an UPPER BOUND that reads the World.
    "random_shooting": RandomShootingMPC,
    "oracle": ClairvoyantOracle,
}


# Learned controllers: name -> "module:function" with `function(directory, env) -> (policy,
# params)`, imported on first use (so that rule-only users never import training code).
LEARNED_LOADERS = {
    "gfn": "gfnfeeds.training.gfn_algorithm:load_controller",
    "incendio": "gfnfeeds.training.incendio_algorithm:load_controller",
    "dam": "gfnfeeds.training.dam_algorithm:load_controller",
}
LEARNED_POLICIES = tuple(LEARNED_LOADERS)
# Trained controllers shipped with the package (commands that made them: checkpoints/README.md).
CHECKPOINT_ROOT = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CHECKPOINTS = {name: CHECKPOINT_ROOT / f"{name}_default" for name in LEARNED_LOADERS}
# Learned controllers whose committed checkpoints also seed the oracle's incumbent, so that its
# never-below guarantee covers them (gfnfeeds/policies/oracle.py).
ORACLE_LEARNED_SEEDS = ("dam", "incendio", "gfn")


def policy_names() -> tuple[str, ...]:
  """The names make_policy accepts."""
  return tuple(RULE_POLICIES)


def all_policy_names() -> tuple[str, ...]:
  """The names load_policy accepts: rules and learned controllers."""
  return tuple(RULE_POLICIES) + LEARNED_POLICIES


def load_policy(name: str, env, checkpoint: str | None = None, **overrides):
  """(policy, policy_params) for any controller name.

  Args:
    name: one of all_policy_names().
    env: the FeedsEnv it acts in.
    checkpoint: export directory or training workdir of a learned controller
      (default: the committed checkpoint); must be None for rules.
    **overrides: settings to change, e.g. num_candidates=1 or condition="mmgc" for
      "gfn", sleep_ms=100 for "pdas".

  Raises:
    ValueError: unknown name, a checkpoint given to a rule, or a bad checkpoint.
  """
  if name in RULE_POLICIES:
    if checkpoint is not None:
      raise ValueError(f"policy {name!r} is rule-based and takes no checkpoint")
    if name == "oracle":
      return _seeded_oracle(env, overrides)
    return _replace_nested(make_policy(name, env), overrides), ()
  if name in LEARNED_LOADERS:
    import importlib

    module, function = LEARNED_LOADERS[name].split(":")
    load = getattr(importlib.import_module(module), function)
    path = DEFAULT_CHECKPOINTS[name] if checkpoint is None else Path(checkpoint)
    controller, params = load(str(path), env)
    return _replace_nested(controller, overrides), params
  raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(all_policy_names())}")


def _seeded_oracle(env, overrides: dict):
  """The clairvoyant oracle seeded with the rules and the committed greedy learned controllers.

  The override `learned_seeds` ("dam,incendio,gfn" by default, "none": the rules only) names
  the learned controllers whose committed checkpoints seed the incumbent. A default seed whose
  checkpoint does not fit `env` (another action set) is left out with a warning; one named
  explicitly raises.
  """
  import warnings
  overrides = dict(overrides)
  explicit = "learned_seeds" in overrides
  spec = str(overrides.pop("learned_seeds", ",".join(ORACLE_LEARNED_SEEDS)))
  names = [] if spec == "none" else [n for n in spec.split(",") if n]
  unknown = [n for n in names if n not in LEARNED_LOADERS]
  if unknown:
    raise ValueError(f"oracle: learned_seeds names unknown controllers {unknown}; valid: "
                     f"{', '.join(LEARNED_LOADERS)} or none")
  oracle = make_policy("oracle", env)
  bases, params = list(oracle.base), [()] * len(oracle.base)
  for seed in names:
    try:
      policy, pp = load_policy(seed, env)
    except ValueError as err:
      if explicit:
        raise
      warnings.warn(f"oracle: the committed {seed} controller does not seed the incumbent "
                    f"({err})")
      continue
    bases.append(policy)
    params.append(pp)
  oracle = _replace_nested(oracle, dict(overrides, base=tuple(bases)))
  return oracle, tuple(params)


def _replace_nested(obj, overrides: dict):
  """dataclasses.replace that also takes dotted keys for nested dataclass fields.

  Example: {"num_candidates": 1, "belief.terminal_horizon_ms": 8000}.

  Raises:
    TypeError: a name that is not a field (the message names it).
  """
  import dataclasses
  flat = {k: v for k, v in overrides.items() if "." not in k}
  nested: dict[str, dict] = {}
  for key, value in overrides.items():
    if "." in key:
      head, rest = key.split(".", 1)
      nested.setdefault(head, {})[rest] = value
  for head, sub in nested.items():
    if not dataclasses.is_dataclass(getattr(obj, head, None)):
      raise TypeError(f"{type(obj).__name__} has no dataclass field {head!r} "
                      f"(in the override {head}.{next(iter(sub))})")
    flat[head] = _replace_nested(getattr(obj, head), sub)
  return dataclasses.replace(obj, **flat)


def make_policy(name: str, env=None, **kwargs) -> Policy:
  """The policy called `name`, built with `kwargs` (its dataclass fields).

  Args:
    name: one of policy_names().
    env: the FeedsEnv the policy will act in. The rule-based policies act
      through explicit Actions and size themselves from the catalog, so they
      do not need it; policies with an `env` field (random_shooting, oracle:
      the env's discrete action set and dynamics) get it.
    **kwargs: field overrides, e.g. make_policy("pdas", env, sleep_ms=100).

  Raises:
    ValueError: unknown name (the message lists the valid ones).
    TypeError: a keyword that is not a field of that policy.
  """
  try:
    cls = RULE_POLICIES[name]
  except KeyError:
    raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(policy_names())}") from None
  import dataclasses
  if env is not None and "env" in {f.name for f in dataclasses.fields(cls)}:
    kwargs.setdefault("env", env)  # planners over the env's discrete action set / dynamics
  return cls(**kwargs)


def parse_policy_spec(spec: str) -> tuple[str, str | None, dict]:
  """'name[:key=value]...' -> (name, checkpoint or None, overrides).

  Values are read as bool (True/true/False/false), int, float, else kept as text;
  `checkpoint=DIR` names the learned controller's directory. Examples:
  'gfn:num_candidates=1:condition=mmgc'; dotted keys set nested settings:
  'gfn:belief.terminal_horizon_ms=8000'.

  Raises:
    ValueError: a part without '='.
  """
  name, *parts = spec.split(":")
  checkpoint, overrides = None, {}
  for part in parts:
    key, sep, value = part.partition("=")
    if not sep or not key:
      raise ValueError(f"policy spec {spec!r}: expected name:key=value[:key=value...], "
                       f"got the part {part!r}")
    if key == "checkpoint":
      checkpoint = value
      continue
    if value in ("True", "true", "False", "false"):
      overrides[key] = value in ("True", "true")
      continue
    for cast in (int, float):
      try:
        value = cast(value)
        break
      except ValueError:
        pass
    overrides[key] = value
  return name, checkpoint, overrides

"""Policies by name: `make_policy(name, env, **kwargs)`."""

from __future__ import annotations

from gfnfeeds.policies.base import Policy
from gfnfeeds.policies.rules import FixedPreload, MpcFixedPreload, NoSave, Pdas, PdasPersonalized

RULE_POLICIES = {
    "no_save": NoSave,
    "fixed_preload": FixedPreload,
    "mpc_fixed_preload": MpcFixedPreload,
    "pdas": Pdas,
    "pdas_w": PdasPersonalized,
}


def policy_names() -> tuple[str, ...]:
  """The names make_policy accepts."""
  return tuple(RULE_POLICIES)


def make_policy(name: str, env=None, **kwargs) -> Policy:
  """The policy called `name`, built with `kwargs` (its dataclass fields).

  Args:
    name: one of policy_names().
    env: the FeedsEnv the policy will act in. The rule-based policies act
      through explicit Actions and size themselves from the catalog, so they
      do not need it; it is part of the signature so that learned policies
      (which use the env's discrete action set) are built the same way.
    **kwargs: field overrides, e.g. make_policy("pdas", env, sleep_ms=100).

  Raises:
    ValueError: unknown name (the message lists the valid ones).
    TypeError: a keyword that is not a field of that policy.
  """
  del env
  try:
    cls = RULE_POLICIES[name]
  except KeyError:
    raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(policy_names())}") from None
  return cls(**kwargs)

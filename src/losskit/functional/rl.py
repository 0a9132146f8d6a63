"""The policy and preference objectives under one name: :mod:`losskit.functional.policy` (registry
family ``rl``) and :mod:`losskit.functional.preference` (family ``preference``)."""

from losskit.functional.policy import *  # noqa: F403
from losskit.functional.policy import __all__ as _policy_all
from losskit.functional.preference import *  # noqa: F403
from losskit.functional.preference import __all__ as _preference_all

__all__ = sorted([*_policy_all, *_preference_all])

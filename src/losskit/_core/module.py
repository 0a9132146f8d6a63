"""``LossModule``: the module form of a loss function.

A module subclass names its function and nothing else::

    @register("huber", family="regression")
    class HuberLoss(LossModule):
        function = staticmethod(F.huber_loss)

The base class then stores the options once, validates their names against the function's
signature, registers tensor options (class weights, priors) as buffers so that ``.to()`` and
``state_dict`` carry them, forwards to the function without touching any state, round-trips
through :meth:`get_config`, and takes its docstring from the function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from losskit._core.checks import did_you_mean
from losskit.compose.composite import LossAlgebra


def _is_number_sequence(value: object) -> bool:
    if not isinstance(value, (list, tuple)) or not value:
        return False
    items = value
    while items and isinstance(items[0], (list, tuple)):
        items = [v for row in items for v in row]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)


class LossModule(LossAlgebra, nn.Module):
    """Base class of every module form; see the module docstring for the contract. Loss modules
    combine with ``+``, ``-``, ``*`` and ``/`` into a :class:`~losskit.compose.CompositeLoss`."""

    function: ClassVar[Callable[..., Tensor]]
    registered_name: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._check_option_names(options)
        self._options: dict[str, Any] = {}
        self._tensor_options: list[str] = []
        for key, value in options.items():
            if _is_number_sequence(value):
                # Lists in a config (class weights, priors) are tensors to the function.
                value = torch.tensor(value, dtype=torch.get_default_dtype())
            if isinstance(value, Tensor):
                self.register_buffer(key, value.detach().clone())
                self._tensor_options.append(key)
            else:
                self._options[key] = value

    @classmethod
    def option_names(cls) -> list[str]:
        """The keyword-only options the function takes."""
        params = inspect.signature(cls.function).parameters.values()
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def _check_option_names(self, options: dict[str, Any]) -> None:
        known = self.option_names()
        for key in options:
            if key not in known:
                raise TypeError(f"{type(self).__name__} got an unexpected option {key!r}{did_you_mean(key, known, 1)} "
                                f"(options: {', '.join(known)})")

    def options(self) -> dict[str, Any]:
        """The options passed to the function, tensors included."""
        tensors = {key: getattr(self, key) for key in self._tensor_options}
        return {**self._options, **tensors}

    def forward(self, input: Tensor, target: Tensor, **call_options: Any) -> Tensor:
        """Call the function with the stored options; ``call_options`` (per-batch values such as
        ``weight=`` or ``normalizer=``) are passed through and win over stored ones."""
        return type(self).function(input, target, **{**self.options(), **call_options})

    def get_config(self) -> dict[str, Any]:
        """A plain dict (tensors as lists) that ``losskit.get`` turns back into an equal module."""
        config: dict[str, Any] = {"name": self.registered_name}
        for key, value in self.options().items():
            config[key] = value.tolist() if isinstance(value, Tensor) else value
        return config

    def extra_repr(self) -> str:
        parts = []
        for key, value in self.options().items():
            shown = f"tensor{tuple(value.shape)}" if isinstance(value, Tensor) and value.dim() else value
            parts.append(f"{key}={shown!s}" if isinstance(value, Tensor) else f"{key}={value!r}")
        return ", ".join(parts)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        function = cls.__dict__.get("function")
        if function is not None and cls.__doc__ is None:
            fn = function.__func__ if isinstance(function, staticmethod) else function
            name = f"losskit.{fn.__name__}"
            cls.__doc__ = (
                f"Module form of :func:`{name}`: options are given to the constructor, the two tensors "
                f"to ``forward``.\n\n" + (fn.__doc__ or "")
            )

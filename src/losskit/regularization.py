r"""Parameter penalties (L1, L2, elastic net) over a model's parameters, with parameter filters.

Functions compute the penalty of a model now; the module forms (:class:`L1Penalty`,
:class:`L2Penalty`, :class:`ElasticNetPenalty`) take the model at construction and are terms of
a composite that need no inputs::

    criterion = losskit.build("ce + 1e-4*l2_penalty", model=net)
    criterion = lnn.CrossEntropyLoss() + 1e-4 * L2Penalty(net)

**Which parameters.** By default biases (a parameter named ``bias``) and every parameter of a
normalization layer (``BatchNorm*``, ``SyncBatchNorm``, ``InstanceNorm*``, ``LayerNorm``,
``GroupNorm``, ``RMSNorm``, and any module whose class name ends in ``Norm``, such as
``LlamaRMSNorm``) are left out (``exclude_defaults=False`` keeps them). Embeddings are weight
matrices and are penalized (``exclude=[nn.Embedding]`` leaves them out). ``include`` and
``exclude`` take a list of filters, each

* a string: a glob over the parameter's full name (``"encoder.*"``, ``"*.weight"``);
* a string starting with ``re:`` or a compiled ``re.Pattern``: a regex searched in the name;
* a module class: the module that owns the parameter is an instance of it.

A parameter is penalized when it matches ``include`` (or ``include`` is empty), matches no
``exclude`` filter, and is not a bias or normalization parameter (unless
``exclude_defaults=False``). Shared (tied) parameters count once. :func:`param_groups` splits
the same way for an optimizer's decoupled weight decay. See ``docs/regularization.md`` for the
difference between an L2 penalty in the loss and AdamW's weight decay.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from losskit._core.checks import check_bool, check_number, excerpt
from losskit._core.numerics import upcast
from losskit._core.registry import register
from losskit.compose.composite import LossAlgebra

__all__ = [
    "NORM_TYPES",
    "ElasticNetPenalty",
    "L1Penalty",
    "L2Penalty",
    "elastic_net_penalty",
    "l1_penalty",
    "l2_penalty",
    "param_groups",
    "selected_parameters",
]

NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None))
    if t is not None
)

Filter = str | re.Pattern | type


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def _compile(filters: Iterable[Filter] | Filter | None, what: str) -> list[Filter]:
    if filters is None:
        return []
    if isinstance(filters, (str, re.Pattern, type)):
        filters = [filters]
    out: list[Filter] = []
    for f in filters:
        if isinstance(f, str) and f.startswith("re:"):
            f = re.compile(f[3:])
        elif isinstance(f, str) and f.startswith("type:"):
            f = _loaded_class(f[5:], what)
        if isinstance(f, type) and not issubclass(f, nn.Module):
            raise TypeError(f"{what}: a type filter must be an nn.Module class, got {f.__name__}")
        if not isinstance(f, (str, re.Pattern, type)):
            raise TypeError(f"{what} filters must be globs, 're:' regexes, re.Pattern or nn.Module classes, "
                            f"got {type(f).__name__}")
        out.append(f)
    return out


def _loaded_class(path: str, what: str) -> type:
    """The class ``module.Class`` of a ``"type:"`` filter, looked up among the modules already
    imported (configs come from outside: nothing is imported or called by name)."""
    module_name, _, cls_name = path.rpartition(".")
    namespace = getattr(sys.modules.get(module_name), "__dict__", {})
    cls = namespace.get(cls_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{what}: the type filter {excerpt('type:' + path)} names no nn.Module class of an imported "
                         "module (filters never import: import the module that defines the class first)")
    return cls


def _matches(filters: list[Filter], name: str, module: nn.Module) -> bool:
    for f in filters:
        if isinstance(f, type):
            if isinstance(module, f):
                return True
        elif isinstance(f, re.Pattern):
            if f.search(name):
                return True
        elif fnmatch.fnmatchcase(name, f):
            return True
    return False


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module]]:
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for short, p in module.named_parameters(recurse=False):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            yield (f"{module_name}.{short}" if module_name else short), p, module


def _split(model: nn.Module, include: Any, exclude: Any,
           exclude_defaults: bool) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_bool("exclude_defaults", exclude_defaults)
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    chosen, rest = [], []
    for name, p, module in _walk(model):
        default_out = exclude_defaults and (name.rsplit(".", 1)[-1] == "bias" or _is_norm(module))
        keep = (not inc or _matches(inc, name, module)) and not _matches(exc, name, module) and not default_out
        (chosen if keep else rest).append((name, p))
    return chosen, rest


def selected_parameters(model: nn.Module, *, include: Any = None, exclude: Any = None,
                        exclude_defaults: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a penalty with these filters reads, in module order.

    Examples:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
        >>> [name for name, _ in selected_parameters(net)]
        ['0.weight', '2.weight']
        >>> [name for name, _ in selected_parameters(net, exclude=["2.*"], exclude_defaults=False)]
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    return _split(model, include, exclude, exclude_defaults)[0]


def param_groups(model: nn.Module, weight_decay: float, *, include: Any = None, exclude: Any = None,
                 exclude_defaults: bool = True) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decay on the parameters a penalty would read, none on the rest.

    For decoupled weight decay with the same selection as the penalties:
    ``torch.optim.AdamW(param_groups(net, 0.05), lr=1e-3)``.

    Examples:
        >>> from torch import nn
        >>> groups = param_groups(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 0.05)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.05), (3, 0.0)]
    """
    check_number("weight_decay", weight_decay, low=0.0)
    chosen, rest = _split(model, include, exclude, exclude_defaults)
    return [{"params": [p for _, p in chosen], "weight_decay": float(weight_decay)},
            {"params": [p for _, p in rest], "weight_decay": 0.0}]


def _params(model: nn.Module, include: Any, exclude: Any, exclude_defaults: bool, what: str) -> list[Tensor]:
    chosen = selected_parameters(model, include=include, exclude=exclude, exclude_defaults=exclude_defaults)
    if not chosen:
        raise ValueError(f"{what}: the filters select no parameter of the {type(model).__name__} "
                         f"(include={include!r}, exclude={exclude!r}, exclude_defaults={exclude_defaults})")
    return [p for _, p in chosen]


def _l1(params: list[Tensor]) -> Tensor:
    return sum(upcast(p).abs().sum() for p in params)


def _l2(params: list[Tensor]) -> Tensor:
    return sum(upcast(p).square().sum() for p in params)


def l1_penalty(model: nn.Module, *, include: Any = None, exclude: Any = None,
               exclude_defaults: bool = True) -> Tensor:
    r"""L1 penalty :math:`\sum_j |w_j|` over the selected parameters (lasso).

    Args:
        model: The model whose parameters are penalized.
        include, exclude, exclude_defaults: Parameter filters (see the module docstring).

    Returns:
        A scalar tensor (float32 for half-precision parameters), differentiable.

    Raises:
        ValueError: The filters select no parameter.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]])), net.bias.fill_(5.0)
        >>> l1_penalty(net)                                # |1| + |-2|; the bias is left out
        tensor(3., grad_fn=<AddBackward0>)
    """
    return _l1(_params(model, include, exclude, exclude_defaults, "l1_penalty"))


def l2_penalty(model: nn.Module, *, half: bool = False, include: Any = None, exclude: Any = None,
               exclude_defaults: bool = True) -> Tensor:
    r"""L2 penalty :math:`\sum_j w_j^2` (``half=True``: :math:`\tfrac12 \sum_j w_j^2`) over the selected parameters.

    With ``half=True``, ``lam * l2_penalty(model, half=True)`` in the loss has gradient
    ``lam * w``: the same update as ``torch.optim.SGD(weight_decay=lam)`` (see
    ``docs/regularization.md``; with Adam it is *not* AdamW's decoupled decay).

    Args:
        model: The model whose parameters are penalized.
        half: Include the factor 1/2.
        include, exclude, exclude_defaults: Parameter filters (see the module docstring).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> l2_penalty(net), l2_penalty(net, half=True)    # 1 + 4, and half of it
        (tensor(5., grad_fn=<AddBackward0>), tensor(2.5000, grad_fn=<MulBackward0>))
    """
    check_bool("half", half)
    value = _l2(_params(model, include, exclude, exclude_defaults, "l2_penalty"))
    return 0.5 * value if half else value


def elastic_net_penalty(model: nn.Module, *, l1_ratio: float = 0.5, half: bool = False, include: Any = None,
                        exclude: Any = None, exclude_defaults: bool = True) -> Tensor:
    r"""Elastic net :math:`\rho \sum_j |w_j| + (1 - \rho) \sum_j w_j^2` over the selected parameters.

    ``half=True`` halves the L2 part: ``alpha * elastic_net_penalty(m, l1_ratio=r, half=True)`` is
    scikit-learn's ``ElasticNet(alpha, l1_ratio=r)`` penalty
    :math:`\alpha\rho\lVert w\rVert_1 + \tfrac{\alpha(1-\rho)}{2}\lVert w\rVert_2^2`.

    Args:
        model: The model whose parameters are penalized.
        l1_ratio: :math:`\rho \in [0, 1]`; 1 is the L1 penalty, 0 the L2 penalty.
        half: Halve the L2 part.
        include, exclude, exclude_defaults: Parameter filters (see the module docstring).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> with torch.no_grad():
        ...     _ = net.weight.copy_(torch.tensor([[1.0, -2.0]]))
        >>> elastic_net_penalty(net, l1_ratio=0.25)         # 0.25 * 3 + 0.75 * 5
        tensor(4.5000, grad_fn=<AddBackward0>)
    """
    rho = check_number("l1_ratio", l1_ratio, low=0.0, high=1.0)
    check_bool("half", half)
    params = _params(model, include, exclude, exclude_defaults, "elastic_net_penalty")
    l2 = _l2(params)
    return rho * _l1(params) + (1.0 - rho) * (0.5 * l2 if half else l2)


def _filter_config(filters: Any) -> Any:
    if filters is None:
        return None
    if isinstance(filters, (str, re.Pattern, type)):
        filters = [filters]
    out = []
    for f in filters:
        if isinstance(f, re.Pattern):
            out.append(f"re:{f.pattern}")
        elif isinstance(f, type):
            out.append(f"type:{f.__module__}.{f.__qualname__}")
        else:
            out.append(f)
    return out


class _Penalty(LossAlgebra, nn.Module):
    """Base of the module forms: holds a reference to the model (not as a submodule, so the
    composite's ``parameters()`` and ``state_dict`` do not take the model in) and ignores any
    call arguments."""

    registered_name = ""
    takes_inputs = False
    function: Any = None

    def __init__(self, model: nn.Module, *, include: Any = None, exclude: Any = None,
                 exclude_defaults: bool = True, **options: Any) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # a plain attribute: not a registered submodule
        self._filters = {"include": include, "exclude": exclude, "exclude_defaults": exclude_defaults}
        self._options = options
        with torch.no_grad():
            self()  # validate the options, and that the filters select something

    def forward(self, *ignored: Any, **ignored_options: Any) -> Tensor:
        """The penalty of the model's current parameters; arguments are ignored."""
        return type(self).function(self.model, **self._options, **self._filters)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.registered_name, **self._options}
        for key in ("include", "exclude"):
            if self._filters[key] is not None:
                config[key] = _filter_config(self._filters[key])
        if not self._filters["exclude_defaults"]:
            config["exclude_defaults"] = False
        return config

    def extra_repr(self) -> str:
        parts = [f"model={type(self.model).__name__}"]
        parts += [f"{k}={v!r}" for k, v in self.get_config().items() if k != "name"]
        return ", ".join(parts)


@register("l1_penalty", family="penalty")
class L1Penalty(_Penalty):
    """Module form of :func:`l1_penalty`: takes the model at construction; a term of a composite
    that needs no inputs (``lnn.CrossEntropyLoss() + 1e-5 * L1Penalty(net)``)."""

    function = staticmethod(l1_penalty)

    def __init__(self, model: nn.Module, *, include: Any = None, exclude: Any = None,
                 exclude_defaults: bool = True) -> None:
        super().__init__(model, include=include, exclude=exclude, exclude_defaults=exclude_defaults)


@register("l2_penalty", family="penalty")
class L2Penalty(_Penalty):
    """Module form of :func:`l2_penalty` (``half=True`` for the 1/2 factor)."""

    function = staticmethod(l2_penalty)

    def __init__(self, model: nn.Module, *, half: bool = False, include: Any = None, exclude: Any = None,
                 exclude_defaults: bool = True) -> None:
        options = {"half": True} if half else {}
        super().__init__(model, include=include, exclude=exclude, exclude_defaults=exclude_defaults, **options)


@register("elastic_net_penalty", "elastic_net", family="penalty")
class ElasticNetPenalty(_Penalty):
    """Module form of :func:`elastic_net_penalty`."""

    function = staticmethod(elastic_net_penalty)

    def __init__(self, model: nn.Module, *, l1_ratio: float = 0.5, half: bool = False, include: Any = None,
                 exclude: Any = None, exclude_defaults: bool = True) -> None:
        options: dict[str, Any] = {"l1_ratio": l1_ratio}
        if half:
            options["half"] = True
        super().__init__(model, include=include, exclude=exclude, exclude_defaults=exclude_defaults, **options)

"""The composite runtime: :class:`LossAlgebra`, :class:`Term`, :class:`CompositeLoss` and the
:class:`CompositeResult` a call returns."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from losskit._core import registry
from losskit._core.checks import check_int, check_number, check_one_of, did_you_mean, excerpt
from losskit._core.numerics import safe_divide
from losskit.compose.schedules import Schedule, finite_number, schedule_from_config, times
from losskit.compose.toml import to_toml
from losskit.compose.weighting import UNCERTAINTY_FORMS, WEIGHTINGS, uncertainty_weighted

__all__ = ["CompositeLoss", "CompositeResult", "LossAlgebra", "Term"]


# --- the result ---------------------------------------------------------------------------------


class CompositeResult(Tensor):
    """The total of a :class:`CompositeLoss` call: a tensor that also carries its components.

    It is the total itself (same value, same autograd graph: ``out.backward()`` works), typed as
    a subclass whose operations return plain tensors (``2 * out`` is a ``torch.Tensor``). The
    components are detached, for logging:

    Attributes:
        unweighted: ``{name: value}``, each term's loss as the term computed it.
        weighted: ``{name: contribution}``, what each term added to the total; they sum to it
            (with learned weighting, the contribution includes the :math:`s_i` term).
        weights: ``{name: weight}``, the weight applied to each loss at this call (a number,
            or a 0-dim tensor with learned weighting).
        outputs: ``{name: object}``, the full result of terms whose loss returns more than a
            tensor (a :class:`~losskit.detection.DetectionLossResult`, a nested composite's result).
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    unweighted: dict[str, Tensor]
    weighted: dict[str, Tensor]
    weights: dict[str, float | Tensor]
    outputs: dict[str, Any]

    def items(self, prefix: str = "") -> dict[str, float]:
        """``{"total", name, name + "/weighted"}`` as Python floats, with one host sync."""
        keys = [f"{prefix}total"]
        values = [self.detach()]
        for name in self.unweighted:
            keys += [f"{prefix}{name}", f"{prefix}{name}/weighted"]
            values += [self.unweighted[name], self.weighted[name]]
        numbers = torch.stack([v.to(torch.float32) for v in values]).tolist()
        return dict(zip(keys, numbers, strict=True))


# --- terms and the composite --------------------------------------------------------------------


class LossAlgebra:
    """``+``, ``-``, ``*`` and ``/`` for loss modules: weighted sums as :class:`CompositeLoss`."""

    def __add__(self, other: object):
        return _add(self, other)

    def __radd__(self, other: object):
        return _add(other, self)

    def __sub__(self, other: object):
        return _add(self, _scale(other, -1.0))

    def __rsub__(self, other: object):
        return _add(other, _scale(self, -1.0))

    def __neg__(self):
        return _scale(self, -1.0)

    def __mul__(self, other: object):
        return _scale(self, other)

    def __rmul__(self, other: object):
        return _scale(self, other)

    def __truediv__(self, other: object):
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            return NotImplemented
        if other == 0:
            raise ZeroDivisionError("a loss divided by 0")
        return _scale(self, 1.0 / other)


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _default_name(loss: nn.Module) -> str:
    name = getattr(loss, "registered_name", "")
    if name:
        return name
    if isinstance(loss, CompositeLoss):
        return "composite"
    cls = type(loss).__name__
    cls = cls[: -len("Loss")] if cls.endswith("Loss") and len(cls) > 4 else cls
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls).lower() or "loss"


class Term(LossAlgebra, nn.Module):
    """One weighted, named term of a :class:`CompositeLoss`.

    Args:
        loss: The loss module (any ``nn.Module`` returning a scalar tensor, or an object whose
            ``.total`` is one, such as :class:`~losskit.detection.YOLOLoss`), or a registry name.
        weight: A number or a :class:`Schedule`.
        name: The component's name (letters, digits, ``_``); by default the loss's registry name.
        input_key: Read ``input[input_key]`` from a dict of predictions instead of ``input``.
        target_key: Read ``target[target_key]`` from a dict of targets instead of ``target``.

    A loss whose ``takes_inputs`` attribute is ``False`` (the penalties of
    :mod:`losskit.regularization`) is called with no arguments.
    """

    def __init__(self, loss: nn.Module | str, weight: float | Schedule = 1.0, name: str | None = None, *,
                 input_key: str | None = None, target_key: str | None = None) -> None:
        super().__init__()
        if isinstance(loss, str):
            loss = registry.get(loss)
        if not isinstance(loss, nn.Module):
            raise TypeError(f"a term's loss must be an nn.Module or a registered name, got {type(loss).__name__}")
        self.loss = loss
        self.weight = _check_weight(weight)
        name = _default_name(loss) if name is None else name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError("a term name must be letters, digits and '_' (not starting with a digit), got "
                             f"{excerpt(name)}")
        self.name = name
        for key_name, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and not isinstance(key, str):
                raise TypeError(f"{key_name} must be a string or None, got {type(key).__name__}")
        self.input_key, self.target_key = input_key, target_key

    @property
    def takes_inputs(self) -> bool:
        return bool(getattr(self.loss, "takes_inputs", True))

    def weight_at(self, progress: float) -> float:
        """The weight at a training progress."""
        return self.weight(progress) if isinstance(self.weight, Schedule) else self.weight

    def replace(self, **changes: Any) -> Term:
        """A new term sharing this term's loss module, with ``changes`` to name, weight or keys."""
        fields = dict(loss=self.loss, weight=self.weight, name=self.name, input_key=self.input_key,
                      target_key=self.target_key)
        fields.update(changes)
        return Term(**fields)

    def evaluate(self, input: Any, target: Any) -> tuple[Tensor, Any]:
        """The term's unweighted scalar, and the loss's full output when it is not a plain tensor."""
        if self.takes_inputs:
            out = self.loss(_select(input, self.input_key, "input", self.name),
                            _select(target, self.target_key, "target", self.name))
        else:
            out = self.loss()
        raw = None
        if isinstance(out, CompositeResult):
            raw = out
        elif not isinstance(out, Tensor):
            total = getattr(out, "total", None)
            if not isinstance(total, Tensor):
                raise TypeError(f"term {self.name!r}: the loss returned {type(out).__name__}; a composite needs a "
                                "scalar tensor or an object with a .total tensor")
            raw, out = out, total
        if out.dim() != 0:
            options = self.loss.options() if hasattr(self.loss, "options") else {}
            hint = (" (it was built with reduction='none'; use 'mean' or 'sum' in a composite)"
                    if options.get("reduction") == "none" else "")
            raise ValueError(f"term {self.name!r} returned a tensor of shape {tuple(out.shape)}, but a composite "
                             f"adds scalars{hint}")
        return out, raw

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name}
        config["weight"] = self.weight.get_config() if isinstance(self.weight, Schedule) else self.weight
        config["loss"] = _loss_config(self.loss, self.name)
        for key in ("input_key", "target_key"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config

    def extra_repr(self) -> str:
        parts = [f"name={self.name!r}", f"weight={self.weight!r}"]
        parts += [f"{k}={getattr(self, k)!r}" for k in ("input_key", "target_key") if getattr(self, k) is not None]
        return ", ".join(parts)

    def forward(self, input: Any = None, target: Any = None) -> Tensor:
        """The unweighted loss of this term (the weight needs the composite's progress)."""
        return self.evaluate(input, target)[0]


def _check_weight(weight: object) -> float | Schedule:
    if isinstance(weight, Schedule):
        return weight
    if isinstance(weight, Mapping):
        return schedule_from_config(weight)
    return finite_number("weight", weight)


def _select(value: Any, key: str | None, what: str, term: str) -> Any:
    if key is None:
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"term {term!r} reads {what}[{key!r}], so {what} must be a dict, got {type(value).__name__}")
    if key not in value:
        raise KeyError(f"term {term!r} reads {what}[{key!r}], but {what} has keys {sorted(value)}"
                       f"{did_you_mean(key, list(value))}")
    return value[key]


class CompositeLoss(LossAlgebra, nn.Module):
    r"""A weighted sum of named loss terms.

    .. math:: L = \sum_i w_i(f)\, L_i

    with :math:`w_i(f)` a number or a :class:`Schedule` of the training progress :math:`f`. With
    ``weighting="uncertainty"`` (Kendall, Gal & Cipolla, CVPR 2018) each loss term also gets a
    learned :math:`s_i = \log \sigma_i^2` (a parameter in ``log_variance``, starting at 0):

    .. math:: L = \sum_i a\, e^{-s_i}\, w_i(f)\, L_i + b\, s_i

    with :math:`(a, b) = (1, 1)` for ``uncertainty_form="plain"`` (the common implementation),
    :math:`(\tfrac12, \tfrac12)` for ``"regression"`` (the paper's Gaussian likelihood,
    :math:`\frac{1}{2\sigma^2} L + \log\sigma`) and :math:`(1, \tfrac12)` for ``"classification"``
    (:math:`\frac{1}{\sigma^2} L + \log\sigma`). Terms without inputs (penalties) keep their
    fixed weight.

    Args:
        terms: Terms, loss modules, composites (a fixed-weight composite's terms are taken over;
            one with learned weighting becomes a single term), or an iterable of them.
        weighting: ``"fixed"`` or ``"uncertainty"``.
        uncertainty_form: ``"plain"``, ``"regression"`` or ``"classification"``.
        total_steps: The number of :meth:`step` calls over training (epochs, say); needed by
            :meth:`step`, which sets the progress to ``index / (total_steps - 1)``.

    Inputs:
        input, target: Passed to every term that takes inputs (or their ``input_key`` /
        ``target_key`` entries). Both may be omitted when no term takes inputs.

    Returns:
        A :class:`CompositeResult`: the scalar total, carrying the components.

    Raises:
        ValueError: A term returns a non-scalar (``reduction="none"``), a term name is invalid.
        KeyError: A term's ``input_key`` or ``target_key`` is missing from the dict it reads.

    Examples:
        >>> import torch, losskit
        >>> from losskit import nn as lnn
        >>> criterion = 0.5 * lnn.MSELoss() + lnn.L1Loss()
        >>> out = criterion(torch.tensor([1.0, 3.0]), torch.zeros(2))
        >>> out                                  # 0.5 * (1 + 9) / 2 + (1 + 3) / 2
        CompositeResult(4.5000)
        >>> out.items()
        {'total': 4.5, 'mse': 5.0, 'mse/weighted': 2.5, 'l1': 2.0, 'l1/weighted': 2.0}
        >>> criterion.get_config()["terms"][0]
        {'name': 'mse', 'weight': 0.5, 'loss': {'name': 'mse'}}
    """

    def __init__(self, terms: Term | nn.Module | Iterable[Term | nn.Module], *, weighting: str = "fixed",
                 uncertainty_form: str = "plain", total_steps: int | None = None) -> None:
        super().__init__()
        check_one_of("weighting", weighting, WEIGHTINGS)
        check_one_of("uncertainty_form", uncertainty_form, tuple(UNCERTAINTY_FORMS))
        check_int("total_steps", total_steps, low=1, optional=True)
        self.weighting, self.uncertainty_form, self.total_steps = weighting, uncertainty_form, total_steps
        collected = collect_terms(terms)
        if not collected:
            raise ValueError("a composite needs at least one term")
        self.terms = nn.ModuleList(_unique_names(collected))
        self.progress = 0.0
        self.step_index = 0
        if weighting == "uncertainty":
            self.log_variance = nn.ParameterDict(
                {t.name: nn.Parameter(torch.zeros(())) for t in self.terms if t.takes_inputs})
        else:
            self.log_variance = None

    # -- progress ------------------------------------------------------------------------------

    def set_progress(self, fraction: float) -> None:
        """Set the fraction of training done (clamped to [0, 1]); also passed on to every term's
        loss that has ``set_progress`` (a :class:`~losskit.detection.YOLOLoss`, a nested composite)."""
        fraction = min(max(check_number("fraction", fraction), 0.0), 1.0)
        self.progress = fraction
        for term in self.terms:
            if callable(getattr(term.loss, "set_progress", None)):
                term.loss.set_progress(fraction)

    def step(self, index: int | None = None) -> None:
        """Move to step ``index`` (0-based) of ``total_steps``, or one step on; progress becomes
        ``index / (total_steps - 1)`` (0 at the first step, 1 at the last)."""
        if self.total_steps is None:
            raise ValueError("step() needs total_steps: CompositeLoss(..., total_steps=epochs), "
                             "or call set_progress(fraction) instead")
        index = self.step_index + 1 if index is None else index
        check_int("index", index, low=0)
        self.step_index = index
        self.set_progress(min(safe_divide(index, self.total_steps - 1), 1.0))

    def get_extra_state(self) -> dict[str, float]:
        return {"progress": self.progress, "step_index": self.step_index}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.progress = float(state["progress"])
        self.step_index = int(state.get("step_index", 0))

    def current_weights(self) -> dict[str, float]:
        """The scheduled weight of each term at the current progress (before learned weighting)."""
        return {t.name: t.weight_at(self.progress) for t in self.terms}

    # -- forward -------------------------------------------------------------------------------

    def forward(self, input: Any = None, target: Any = None) -> CompositeResult:
        unweighted: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        weights: dict[str, float | Tensor] = {}
        outputs: dict[str, Any] = {}
        total: Tensor | None = None
        for term in self.terms:
            value, raw = term.evaluate(input, target)
            w = term.weight_at(self.progress)
            if self.log_variance is not None and term.name in self.log_variance:
                effective, contribution = uncertainty_weighted(value, w, self.log_variance[term.name],
                                                               self.uncertainty_form)
                weights[term.name] = effective.detach()
            else:
                contribution = w * value
                weights[term.name] = w
            total = contribution if total is None else total + contribution
            unweighted[term.name] = value.detach()
            weighted[term.name] = contribution.detach()
            if raw is not None:
                outputs[term.name] = raw
        result = total.as_subclass(CompositeResult)
        result.unweighted, result.weighted, result.weights, result.outputs = unweighted, weighted, weights, outputs
        return result

    # -- config --------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """A plain dict that :func:`build` turns back into an equal composite (progress and learned
        parameters are state: they travel in ``state_dict``)."""
        config: dict[str, Any] = {"terms": [t.get_config() for t in self.terms], "weighting": self.weighting}
        if self.weighting == "uncertainty":
            config["uncertainty_form"] = self.uncertainty_form
        if self.total_steps is not None:
            config["total_steps"] = self.total_steps
        return config

    def to_toml(self) -> str:
        """The config as TOML text (see :func:`to_toml`)."""
        return to_toml(self)

    def extra_repr(self) -> str:
        parts = [f"weighting={self.weighting!r}"]
        if self.weighting == "uncertainty":
            parts.append(f"uncertainty_form={self.uncertainty_form!r}")
        if self.total_steps is not None:
            parts.append(f"total_steps={self.total_steps}")
        return ", ".join(parts)


def collect_terms(terms: object) -> list[Term]:
    if isinstance(terms, CompositeLoss):
        if terms.weighting == "fixed":
            return [t.replace() for t in terms.terms]
        return [Term(terms)]
    if isinstance(terms, Term):
        return [terms.replace()]
    if isinstance(terms, nn.Module):
        return [Term(terms)]
    if isinstance(terms, (str, bytes)) or not isinstance(terms, Iterable):
        raise TypeError(f"terms must be Terms, loss modules or composites, got {type(terms).__name__}")
    collected: list[Term] = []
    for item in terms:
        if isinstance(item, (CompositeLoss, Term, nn.Module)):
            collected.extend(collect_terms(item))
        else:
            raise TypeError(f"terms must be Terms, loss modules or composites, got an item of type "
                            f"{type(item).__name__}")
    return collected


def _unique_names(terms: list[Term]) -> list[Term]:
    """Rename repeated names ``dice, dice_2, dice_3``, in order."""
    seen: set[str] = set()
    out = []
    for term in terms:
        name, k = term.name, 1
        while name in seen:
            k += 1
            name = f"{term.name}_{k}"
        seen.add(name)
        out.append(term if name == term.name else term.replace(name=name))
    return out


# --- algebra ------------------------------------------------------------------------------------


def _is_scalar(x: object) -> bool:
    return isinstance(x, Schedule) or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _as_composite(x: object) -> CompositeLoss:
    if isinstance(x, CompositeLoss):
        return x
    if isinstance(x, (Term, nn.Module)):
        return CompositeLoss(x)
    raise TypeError(f"cannot combine a loss with {type(x).__name__}")


def _scale(x: object, factor: object):
    if isinstance(factor, nn.Module):
        if isinstance(x, nn.Module):
            raise TypeError("cannot multiply two losses; multiply a loss by a number or a schedule")
        return NotImplemented
    if not _is_scalar(factor):
        return NotImplemented
    composite = _as_composite(x)
    if composite.weighting != "fixed":
        return CompositeLoss(Term(composite, factor))
    terms = [t.replace(weight=times(t.weight, factor)) for t in composite.terms]
    return CompositeLoss(terms, total_steps=composite.total_steps)


def _add(a: object, b: object):
    for x in (a, b):
        if isinstance(x, int) and not isinstance(x, bool) and x == 0:  # sum([...]) starts at 0
            return _as_composite(b if x is a else a)
    if not isinstance(a, nn.Module) or not isinstance(b, nn.Module):
        return NotImplemented
    left, right = _as_composite(a), _as_composite(b)
    steps = left.total_steps if left.total_steps == right.total_steps else None
    return CompositeLoss([left, right], total_steps=steps)



def _loss_config(loss: nn.Module, term: str) -> dict[str, Any]:
    if isinstance(loss, CompositeLoss) or registry.is_registered(type(loss)):
        return loss.get_config()
    get_config = getattr(loss, "get_config", None)
    cls = type(loss)
    path = registry.registered_class_path(cls)
    if callable(get_config) and path is not None:
        return {"class": path, **get_config()}
    raise TypeError(f"term {term!r} holds a {registry.class_path(cls)}, which has no losskit config; use a "
                    "registered loss, or a module with get_config() registered with "
                    "losskit._core.registry.register_class")

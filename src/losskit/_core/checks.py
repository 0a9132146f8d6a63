"""Input validation with messages that name the argument, what it got and what was expected.

Two kinds of check:

* **Cheap checks** read only metadata (shapes, dtypes, option values). They always run.
* **Value checks** read tensor values (class index in range, probabilities in [0, 1], a finite
  result). They need a device-to-host synchronisation, so they can be switched off globally for
  speed and for ``torch.compile(fullgraph=True)``::

      losskit.set_checks(False)          # off from now on
      with losskit.set_checks(False):    # off inside the block only
          loss = losskit.cross_entropy(logits, target)

  Value checks are also skipped while ``torch.compile`` traces a function, because a
  data-dependent branch would break the graph.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

_value_checks_enabled = True


class set_checks:  # noqa: N801  (lower-case like torch.set_grad_enabled, which it mirrors)
    """Switch value checks on or off; usable as a plain call or as a context manager.

    Args:
        enabled: ``True`` to run value checks (the default state), ``False`` to skip them.

    Examples:
        >>> import losskit
        >>> with losskit.set_checks(False):
        ...     losskit.checks_enabled()
        False
        >>> losskit.checks_enabled()
        True
    """

    def __init__(self, enabled: bool) -> None:
        global _value_checks_enabled
        if not isinstance(enabled, bool):
            raise TypeError(f"set_checks: enabled must be a bool, got {type(enabled).__name__}")
        self.previous = _value_checks_enabled
        _value_checks_enabled = enabled

    def __enter__(self) -> set_checks:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _value_checks_enabled
        _value_checks_enabled = self.previous


def did_you_mean(name: str, choices: Sequence[str], n: int = 3) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def excerpt(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut in the middle when longer than ``limit`` characters, so that a message
    quoting a value from outside (a spec string, a config key) stays short.

    Examples:
        >>> excerpt("dice")
        "'dice'"
        >>> excerpt("x" * 1000, limit=20)
        "'xxxxxxx…xxxxxxx' (1000 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    half = max((limit - 4) // 2, 1)
    size = f" ({len(value)} characters)" if isinstance(value, str) else f" ({len(text)} characters as text)"
    return f"{text[:half]}…{text[-half:]}{size}"


def clip(message: str, limit: int = 400) -> str:
    """A message cut to about ``limit`` characters (its start kept), for errors passed on from a
    place that may have quoted a long value."""
    return message if len(message) <= limit else f"{message[:limit]}… (cut from {len(message)} characters)"


def checks_enabled() -> bool:
    """Whether value checks run (they never run while ``torch.compile`` traces)."""
    return _value_checks_enabled and not torch.compiler.is_compiling()


def _shape(x: Tensor) -> str:
    return f"shape {tuple(x.shape)}"


# --- cheap checks: metadata only -------------------------------------------------------------


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_floating(name: str, x: Tensor) -> None:
    check_tensor(name, x)
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_has_class_dim(name: str, x: Tensor) -> None:
    """Class-distribution inputs need a class dimension (dim 0 unbatched, dim 1 batched)."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have a class dimension: shape (C,), (N, C) or (N, C, d1, ..., dk), "
                         "got a scalar")


def check_same_device(name_a: str, a: Tensor, name_b: str, b: object) -> None:
    """``b`` must be on ``a``'s device: a clear error naming both arguments and both devices, before
    any value check or kernel meets the mix. A CPU scalar (0-dim) tensor may join any device, as in
    torch's own operators."""
    if not isinstance(b, Tensor) or b.device == a.device or (b.dim() == 0 and b.device.type == "cpu"):
        return
    raise ValueError(f"{name_b} is on device {b.device}, but {name_a} is on {a.device}: every tensor argument "
                     f"must be on one device (move it with .to({name_a}.device))")


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    check_same_device(name_a, a, name_b, b)
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the same shape as {name_a} {tuple(a.shape)}, got {_shape(b)}")


def check_broadcastable(name: str, x: Tensor, shape: torch.Size, what: str, *, input: Tensor | None = None) -> None:
    """``x`` must broadcast to ``shape`` without changing it (so it cannot silently grow the loss),
    and be on ``input``'s device when given."""
    if input is not None:
        check_same_device("input", input, name, x)
    try:
        broadcast = torch.broadcast_shapes(x.shape, shape)
    except RuntimeError:
        broadcast = None
    if broadcast != shape:
        raise ValueError(f"{name} must be broadcastable to {what} {tuple(shape)}, got {_shape(x)}")


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A real-number option within ``[low, high]`` (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value:  # NaN; not math.isnan, which torch.compile cannot trace for a symbolic float
        raise ValueError(f"{name} must not be NaN")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value:g}")
    return value


def check_int(name: str, value: object, *, low: int | None = None, optional: bool = False) -> int | None:
    """An integer option of at least ``low`` (``None`` passes where ``optional``). A bool is not
    an integer here: ``True`` is not 1."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or None" if optional else "an integer"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {excerpt(value)}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def check_ignore_index(ignore_index: object, *, optional: bool = True) -> None:
    """``ignore_index`` is an int, or ``None`` where ``optional``; never a bool (``True`` is not class 1)."""
    if isinstance(ignore_index, bool):
        raise TypeError(f"ignore_index must be an int class index, got the bool {ignore_index}: a bool is "
                        "not taken as class 0 or 1")
    if ignore_index is None and optional:
        return
    if not isinstance(ignore_index, int):
        expected = "an int or None" if optional else "an int"
        raise TypeError(f"ignore_index must be {expected}, got {type(ignore_index).__name__}")


def check_one_of(name: str, value: object, choices: Sequence[object]) -> None:
    """``value`` is one of ``choices``; a bool never passes for a number (``True == 1`` in Python)."""
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise TypeError(f"{name} must be one of {tuple(choices)}, got the bool {value}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {excerpt(value)}")


def check_class_vector(name: str, x: Tensor, num_classes: int, *, input: Tensor | None = None) -> None:
    """A per-class option (class weights, priors, counts) must have shape ``(C,)``, on ``input``'s
    device when given."""
    check_tensor(name, x)
    if input is not None:
        check_same_device("input", input, name, x)
    if x.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},), one entry per class, got {_shape(x)}")


# --- value checks: need a device sync, switchable ---------------------------------------------


def check_loss_finite(loss: Tensor, inputs: Mapping[str, Tensor], *, computed: Tensor | None = None,
                      options: Mapping[str, object] | None = None) -> None:
    """Value check on a loss's result; when it is NaN or infinite, name the cause.

    Checking the result instead of every input costs one pass over the (usually much smaller)
    result, and it also catches overflow. Inputs that cannot affect the result (ignored samples,
    ``-inf`` logits of classes the target does not name) pass, as they should.

    Args:
        loss: The result, in the dtype returned to the caller.
        inputs: The tensors the loss was computed from, by argument name.
        computed: The result before it was cast to ``loss``'s dtype, when it was: a finite
            ``computed`` and a non-finite ``loss`` is an overflow of the output dtype.
        options: Tensor options that scale the result (``weight``, ``normalizer``), by name; they
            are blamed like the inputs.
    """
    if not checks_enabled() or loss.numel() == 0 or bool(torch.isfinite(loss).all()):
        return
    if computed is not None and computed.dtype != loss.dtype and bool(torch.isfinite(computed).all()):
        largest = computed.detach().abs().max().item()
        name = next(iter(inputs), "input")
        raise ValueError(
            f"the loss overflows {loss.dtype}, the dtype of {name}: its magnitude reaches {largest:g}, beyond "
            f"{torch.finfo(loss.dtype).max:g}. Pass {name} as float32 ({name}.float()) to get a float32 result, "
            "or scale the inputs down"
        )
    culprits = [_non_finite(name, x) for name, x in {**inputs, **(options or {})}.items()]
    culprits = [c for c in culprits if c]
    cause = "; ".join(culprits) if culprits else (
        "every input is finite, so it overflowed: check the scale of the inputs and options")
    raise ValueError(
        f"the loss is not finite: {cause}. Fix the upstream computation, or switch value checks off "
        "with losskit.set_checks(False) to skip this test"
    )


def _non_finite(name: str, x: object) -> str:
    """``"x contains non-finite values (1 NaN)"`` for a floating tensor with NaN or inf, else ``""``."""
    if not (isinstance(x, Tensor) and x.is_floating_point()) or bool(torch.isfinite(x).all()):
        return ""
    counts = {"NaN": int(torch.isnan(x).sum()), "+inf": int((x == float("inf")).sum()),
              "-inf": int((x == float("-inf")).sum())}
    found = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
    return f"{name} contains non-finite values ({found})"


def check_normalizer_value(normalizer: object) -> None:
    """Value check: a tensor ``normalizer`` is > 0 (a number is checked for free by :func:`check_number`).

    A count of 0 (no positives, no tokens) would make the loss infinite or NaN, and a negative
    one would flip its sign; clamp such counts before passing them (``normalizer.clamp_min(1)``).
    """
    if not isinstance(normalizer, Tensor) or not checks_enabled() or bool((normalizer > 0).all()):
        return
    raise ValueError(
        f"normalizer must be > 0, got {normalizer.detach().reshape(-1)[0].item():g}; a count of 0 (no "
        "positives, no tokens) gives an infinite or NaN loss: clamp it first, e.g. normalizer.clamp_min(1)"
    )


def check_finite(name: str, x: Tensor, *, allow_neg_inf: bool = False) -> None:
    """Reject NaN and infinity (``-inf`` can be allowed: masked logits are a legitimate input)."""
    if not checks_enabled() or x.numel() == 0:
        return
    ok = ~torch.isnan(x) & (x != float("inf")) if allow_neg_inf else torch.isfinite(x)
    if not bool(ok.all()):
        bad = "NaN or +inf" if allow_neg_inf else "NaN or infinite"
        raise ValueError(
            f"{name} contains {bad} values; the loss would not be finite. Fix the upstream computation, "
            "or switch value checks off with losskit.set_checks(False) to skip this test"
        )


def check_class_indices(name: str, target: Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Every index is in ``[0, num_classes)`` or equals ``ignore_index``."""
    if not checks_enabled() or target.numel() == 0:
        return
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid |= target == ignore_index
    if not bool(valid.all()):
        bad = target[~valid]
        ignore = "" if ignore_index is None else f" or ignore_index={ignore_index}"
        raise ValueError(
            f"{name} has class indices outside [0, {num_classes - 1}]{ignore}: "
            f"found {bad.min().item()}..{bad.max().item()}"
        )


def check_in_unit_interval(name: str, x: Tensor) -> None:
    """Probabilities (soft targets) must lie in ``[0, 1]``."""
    if not checks_enabled() or x.numel() == 0:
        return
    low, high = torch.aminmax(x)  # one pass and one sync (NaN is left to the finite-result check)
    if bool((low < 0) | (high > 1)):
        raise ValueError(
            f"{name} must hold probabilities in [0, 1]; found values from {low.item():g} to {high.item():g}"
        )


def check_distribution(name: str, x: Tensor, dim: int = 1) -> None:
    """Probability rows along ``dim`` must sum to 1 (after :func:`check_in_unit_interval`).

    The tolerance, 1e-2, covers a distribution rounded to bfloat16 (each term off by at most
    ``eps / 2 = 0.004`` relative, so the sum too; summed here in float64) or made by a caller in
    a lower precision than it is passed in. Multi-hot rows (sums of 2 or more) are labels for
    the sigmoid losses, not targets of a softmax.
    """
    if not checks_enabled() or x.numel() == 0:
        return
    error = (x.sum(dim, dtype=torch.float64) - 1).abs()
    if bool(error.max() > 1e-2):
        at = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
        total = x.sum(dim, dtype=torch.float64)[at].item()
        raise ValueError(
            f"{name} holds class probabilities for a softmax, so each row along dim {dim} must sum to 1; "
            f"the row at {at} sums to {total:g}. Multi-hot labels (several classes present) need a "
            f"sigmoid loss such as losskit.binary_cross_entropy or losskit.sigmoid_focal_loss"
        )


def check_positive_values(name: str, x: Tensor, *, strict: bool = True) -> None:
    if not checks_enabled() or x.numel() == 0:
        return
    ok = (x > 0) if strict else (x >= 0)
    if not bool(ok.all()):
        relation = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be {relation} everywhere; found minimum {x.min().item():g}")

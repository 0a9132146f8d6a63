"""Building composites from outside descriptions: :func:`build` takes a spec string, a config
dict or list, TOML text or a file, and resolves loss and penalty names through the registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from losskit._core import registry
from losskit._core.checks import clip, excerpt
from losskit.compose.composite import CompositeLoss, Term, collect_terms
from losskit.compose.schedules import schedule_from_config
from losskit.compose.spec import parse_spec
from losskit.compose.toml import load_toml

__all__ = ["build", "from_toml"]


@contextmanager
def _config_errors(where: str) -> Iterator[None]:
    """Errors raised while building the part of a config at ``where`` (``"terms[1].loss"``) start
    with it, and stay short."""
    try:
        yield
    except (TypeError, ValueError) as error:
        message = str(error)
        if not message.startswith(where):
            message = f"{where}: {message}"
        raise (ValueError if isinstance(error, ValueError) else TypeError)(clip(message)) from None


def _build_loss(config: Any, model: nn.Module | None, where: str) -> nn.Module:
    if isinstance(config, nn.Module):
        return config
    if isinstance(config, str):
        with _config_errors(where):
            terms = parse_spec(config, model)
            if len(terms) != 1 or terms[0][0] != 1.0:
                raise ValueError(f"a term's loss must be one loss without a weight, got {excerpt(config)}")
        return terms[0][1]
    if not isinstance(config, Mapping):
        raise TypeError(f"{where or 'a loss'} must be a loss name, a spec string or a config dict, got "
                        f"{type(config).__name__}")
    if "terms" in config:
        return _composite_from_config(config, model, where)
    return registry.from_config(config, where, model=model)


_TERM_KEYS = ("loss", "weight", "name", "input_key", "target_key")


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _term_from_config(item: Any, model: nn.Module | None, where: str) -> list[Term]:
    if isinstance(item, str):
        with _config_errors(where):
            return list(_as_composite_from_spec(item, model).terms)
    if isinstance(item, (Term, nn.Module)):
        return collect_terms(item)
    if not isinstance(item, Mapping):
        raise TypeError(f"{where or 'a term'} must be a spec string, a term dict or a loss config, got "
                        f"{type(item).__name__}")
    if "loss" not in item:  # a bare loss config: weight 1
        return [Term(_build_loss(item, model, where))]
    unknown = [str(k) for k in item if k not in _TERM_KEYS]
    if unknown:
        raise ValueError(f"{where or 'the term'} has unknown keys {excerpt(sorted(unknown), 200)}; a term has "
                         f"{', '.join(_TERM_KEYS)}")
    loss = _build_loss(item["loss"], model, _at(where, "loss"))
    with _config_errors(_at(where, "weight")):
        weight = schedule_from_config(item.get("weight", 1.0))
    with _config_errors(where):
        return [Term(loss, weight, item.get("name"), input_key=item.get("input_key"),
                     target_key=item.get("target_key"))]


_COMPOSITE_KEYS = ("terms", "weighting", "uncertainty_form", "total_steps")


def _composite_from_config(config: Mapping[str, Any], model: nn.Module | None, where: str = "") -> CompositeLoss:
    registry.check_nesting(config, where or "the config")
    unknown = [str(k) for k in config if k not in _COMPOSITE_KEYS]
    if unknown:
        raise ValueError(f"{where or 'the composite config'} has unknown keys {excerpt(sorted(unknown), 200)}; a "
                         f"composite config has {', '.join(_COMPOSITE_KEYS)}")
    terms = config["terms"]
    if isinstance(terms, (str, Mapping)):
        terms = [terms]
    if not isinstance(terms, (list, tuple)):
        raise TypeError(f"{_at(where, 'terms')} must be a list of terms (spec strings, term dicts or loss configs), "
                        f"got {type(terms).__name__}")
    collected = [t for i, item in enumerate(terms)
                 for t in _term_from_config(item, model, f"{_at(where, 'terms')}[{i}]")]
    with _config_errors(where or "the composite config"):
        return CompositeLoss(collected, weighting=config.get("weighting", "fixed"),
                             uncertainty_form=config.get("uncertainty_form", "plain"),
                             total_steps=config.get("total_steps"))


def _as_composite_from_spec(spec: str, model: nn.Module | None) -> CompositeLoss:
    terms = parse_spec(spec, model)
    return CompositeLoss([Term(loss, weight, name) for weight, loss, name in terms])


def build(spec: Any, *, model: nn.Module | None = None) -> CompositeLoss:
    """A :class:`CompositeLoss` from a spec string, a config dict or list, TOML text or a file.

    Args:
        spec: One of

            * a spec string: ``"0.5*dice + ce"``, ``"focal(gamma=1.5) + 1e-4*l2_penalty"``,
              ``"linear(0.8, 0.1)*bce + 0.5*(dice + ce)"`` (grammar in ``docs/compose.md``);
            * TOML text (a string that starts with ``[`` or has a line break) or a
              :class:`pathlib.Path` to a TOML file, as :func:`to_toml` writes;
            * a config dict ``{"terms": [...], "weighting": ...}`` as
              :meth:`CompositeLoss.get_config` returns, or a single loss config ``{"name": ...}``;
            * a list of terms: spec strings, term dicts ``{"loss": ..., "weight": ..., "name": ...}``
              or loss configs;
            * a composite (returned unchanged) or a loss module (one term).
        model: The model whose parameters the penalties (``l1_penalty``, ``l2_penalty``,
            ``elastic_net_penalty``) read.

    Raises:
        ValueError: A malformed spec or unknown name (with the closest names), a penalty without
            ``model``.
        TypeError: An option the loss does not take.

    Examples:
        >>> import losskit
        >>> criterion = losskit.build("0.5*dice + ce")
        >>> [(t.name, t.weight) for t in criterion.terms]
        [('dice', 0.5), ('cross_entropy', 1.0)]
        >>> losskit.build("0.5*hubr + ce")
        Traceback (most recent call last):
        ...
        ValueError: in '0.5*hubr + ce' at position 4: unknown loss 'hubr'; did you mean 'huber'?
    """
    if isinstance(spec, CompositeLoss):
        return spec
    if isinstance(spec, Path):
        return from_toml(spec.read_text(), model=model)
    if isinstance(spec, str):
        if spec.lstrip().startswith("[") or "\n" in spec.strip():
            return from_toml(spec, model=model)
        return _as_composite_from_spec(spec, model)
    if isinstance(spec, Mapping):
        if "terms" in spec:
            return _composite_from_config(spec, model)
        registry.check_nesting(spec)
        return CompositeLoss(_term_from_config(spec, model, ""))
    if isinstance(spec, (list, tuple)):
        return _composite_from_config({"terms": list(spec)}, model)
    if isinstance(spec, nn.Module):
        return CompositeLoss(spec)
    raise TypeError(f"build takes a spec string, TOML, a config dict or list, or a module; got {type(spec).__name__}")


def from_toml(text: str, *, model: nn.Module | None = None) -> CompositeLoss:
    """A composite from TOML text as :func:`~losskit.compose.to_toml` writes it."""
    return build(load_toml(text), model=model)

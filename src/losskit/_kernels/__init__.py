r"""Which implementation a loss runs: the torch path or a Triton kernel (``backend=``).

Losses with a Triton kernel take ``backend="auto" | "torch" | "triton"``; this module is the one
place that turns the option into a choice.

- ``"torch"``: the PyTorch path, on any device, differentiable any number of times.
- ``"triton"``: the Triton kernel (``pip install 'losskit[triton]'``). It runs on CUDA tensors;
  on CPU tensors only under the Triton interpreter (``TRITON_INTERPRET=1`` set before the first
  kernel is used), which is how the kernels are tested without a GPU, and is slow.
- ``"auto"`` (the default): Triton for CUDA tensors when ``triton`` is installed, torch otherwise.

Both compute the same formulas in the same stable form (log space, the peak's own term kept out
of sums), so they agree within the float32 accuracy budget. Under ``torch.compile`` the torch path's
plain expression is traced whatever the choice, and second derivatives always differentiate it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch
from torch import Tensor

from losskit._core.checks import check_one_of

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


@functools.cache
def triton_installed() -> bool:
    """Whether the ``triton`` package can be imported (looked up once, never imported here)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in its interpreter (``TRITON_INTERPRET=1``), on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def resolve_backend(backend: str, input: Tensor) -> str:
    """``"torch"`` or ``"triton"``: the implementation ``backend`` selects for ``input``.

    Raises:
        ValueError: An unknown ``backend``, or ``"triton"`` for a tensor off CUDA without the
            interpreter.
        ImportError: ``"triton"`` without the ``triton`` package.
    """
    check_one_of("backend", backend, BACKENDS)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if input.device.type == "cuda" and triton_installed() else "torch"
    if not triton_installed():
        raise ImportError("backend='triton' needs the triton package: pip install 'losskit[triton]'")
    if input.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"backend='triton' runs on CUDA tensors, got input on {input.device}; use backend='torch' "
            f"or 'auto' there (Triton's interpreter runs the kernels on the CPU with TRITON_INTERPRET=1)"
        )
    return "triton"


def use_triton(backend: str, input: Tensor) -> bool:
    """``resolve_backend(backend, input) == "triton"``, and not while ``torch.compile`` traces."""
    return resolve_backend(backend, input) == "triton" and not torch.compiler.is_compiling()


def triton_cross_entropy(input: Tensor, index: Tensor, valid: Tensor, weight: Tensor | None,
                         label_smoothing: float, z_loss: float = 0.0, softcap: float | None = None) -> Tensor:
    """Per-sample index-target cross-entropy on the Triton kernel (:mod:`.triton.cross_entropy`)."""
    from losskit._kernels.triton.cross_entropy import cross_entropy

    return cross_entropy(input, index, valid, weight, label_smoothing, z_loss, softcap)


def triton_cross_entropy_chunk(z: Tensor, index: Tensor, valid: Tensor, **options) -> tuple[
        Tensor, dict[str, Tensor], Tensor | None]:
    """One chunk of the fused linear cross-entropy (or log-probabilities) on the Triton kernel:
    :func:`.triton.cross_entropy.cross_entropy_chunk`, the kernel form of
    :func:`losskit.functional._softmax.cross_entropy_rows`."""
    from losskit._kernels.triton.cross_entropy import cross_entropy_chunk

    return cross_entropy_chunk(z, index, valid, **options)


def triton_sigmoid_focal(x: Tensor, t: Tensor, gamma: float, alpha: float | None, tw: Tensor | None = None) -> Tensor:
    """Elementwise sigmoid focal loss or BCE (``gamma=0, alpha=None``) on the Triton kernel
    (:mod:`.triton.binary`); ``tw`` is the target times ``pos_weight``."""
    from losskit._kernels.triton.binary import sigmoid_focal

    return sigmoid_focal(x, t, gamma, alpha, tw)


__all__ = ["BACKENDS", "Backend", "interpreting", "resolve_backend", "triton_cross_entropy",
           "triton_cross_entropy_chunk", "triton_installed", "triton_sigmoid_focal", "use_triton"]

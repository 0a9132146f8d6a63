"""Triton kernels of the hot losses (imported only when ``backend`` selects Triton).

- :mod:`.cross_entropy`: softmax cross-entropy on index targets, loss and gradient in one launch.
- :mod:`.binary`: sigmoid focal loss and binary cross-entropy, loss and gradient in one pass.
"""

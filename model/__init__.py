"""downpour's autodiff engine: tensors, a registry of ops with their gradients, and layers.

Importing the package registers every op (elementwise, matmul, reductions, fused NN ops,
convolution, pooling, recurrent), so `model.registry.OPS` is complete.
"""
from . import ops, ops_conv, ops_nn, ops_rnn  # noqa: F401 - imported to fill the op registry
from . import functional, optim
from .gradcheck import GradcheckError, gradcheck
from .tensor import Tensor, is_grad_enabled, no_grad, tensor

__all__ = [
    "GradcheckError",
    "Tensor",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "optim",
    "tensor",
]

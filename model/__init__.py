"""downpour's autodiff engine: tensors, a registry of ops with their gradients, layers (`nn`)
and update rules (`optim`).

Importing the package registers every op (elementwise, matmul, reductions, fused NN ops,
convolution, pooling, recurrent), so `model.registry.OPS` is complete.
"""
from . import (  # noqa: F401 - imported to fill the op registry
    functional,
    nn,  # last: the layers are built on everything above
    ops,
    ops_conv,
    ops_matmul,
    ops_nn,
    ops_reduce,
    ops_rnn,
    ops_shape,
    ops_sparse,
    optim,
)
from .gradcheck import GradcheckError, gradcheck
from .sparse import RowSparse
from .tensor import Tensor, is_grad_enabled, no_grad, tensor

__all__ = [
    "GradcheckError",
    "RowSparse",
    "Tensor",
    "functional",
    "gradcheck",
    "is_grad_enabled",
    "nn",
    "no_grad",
    "optim",
    "tensor",
]

"""Contrastive-similarity kernels: fused InfoNCE-family loss and streaming top-k similar keys.

Each op dispatches to Triton kernels on CUDA tensors and to an exact chunked PyTorch path elsewhere; neither
materialises the N x M similarity matrix. `common.kernels.reference` holds the materialised ground truth.
Bad arguments raise `KernelInputError` naming the argument; NaN or inf in the embeddings raise
`NonFiniteInputError` on the CPU always and on an accelerator with `PNU_CHECK_FINITE=1` (off there by
default: the check costs a host synchronisation per call).
"""

from common.kernels._validation import KernelInputError, NonFiniteInputError
from common.kernels.dispatch import info_nce, topk_similar

__all__ = ["KernelInputError", "NonFiniteInputError", "info_nce", "topk_similar"]

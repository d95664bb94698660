"""Contrastive-similarity kernels: fused InfoNCE-family loss and streaming top-k similar keys.

Each op dispatches to Triton kernels on CUDA tensors and to an exact chunked PyTorch path elsewhere; neither
materialises the N x M similarity matrix. `common.kernels.reference` holds the materialised ground truth.
"""

from common.kernels._validation import KernelInputError
from common.kernels.dispatch import info_nce, topk_similar

__all__ = ["KernelInputError", "info_nce", "topk_similar"]

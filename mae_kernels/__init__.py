"""mae_kernels: fused CUDA and Triton kernels for Masked Autoencoder pre-training.

Public API only; see README.md. Backends: mae_kernels.backends (use_backend, MAE_KERNELS_BACKEND)."""
from . import _ext  # noqa: F401  (loads the compiled ops when built)
from .backends import BackendUnavailable, use_backend
from .ops.random_masking import random_mask_indices, random_masking
from .ops.tube_mask_indices import tube_mask_indices
from .ops.mask_to_indices import mask_to_indices
from .ops.decoder_mask_indices import decoder_mask_indices
from .ops.masked_patchify import masked_patchify, patchify, unpatchify
from .ops.masked_patch_embed import masked_patch_embed, random_masked_patch_embed
from .ops.unshuffle_with_mask_tokens import unshuffle_with_mask_tokens
from .ops.append_mask_tokens import append_mask_tokens
from .ops.masked_mse_loss import denormalize_pred, mae_st_target_frames, masked_mse_loss, patch_stats
from .integrations.auto import apply, unapply

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "use_backend", "random_masking", "random_mask_indices", "tube_mask_indices",
           "mask_to_indices", "decoder_mask_indices",
           "patchify", "unpatchify", "masked_patchify", "masked_patch_embed", "random_masked_patch_embed",
           "unshuffle_with_mask_tokens", "append_mask_tokens", "masked_mse_loss", "mae_st_target_frames",
           "patch_stats", "denormalize_pred", "apply", "unapply"]

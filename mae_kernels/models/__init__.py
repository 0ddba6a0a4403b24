"""Models on mae_kernels' fused ops: the official MAE (MaskedAutoencoderViT) and its configurations."""
from .mae import (MODELS, MaskedAutoencoderViT, mae_vit_base_patch16, mae_vit_base_patch16_dec512d8b,
                  mae_vit_huge_patch14, mae_vit_huge_patch14_dec512d8b, mae_vit_large_patch16,
                  mae_vit_large_patch16_dec512d8b, mae_vit_tiny)
from .pos_embed import sincos_2d, sinusoid_table

__all__ = ["MODELS", "MaskedAutoencoderViT", "mae_vit_base_patch16", "mae_vit_large_patch16",
           "mae_vit_huge_patch14", "mae_vit_tiny", "mae_vit_base_patch16_dec512d8b",
           "mae_vit_large_patch16_dec512d8b", "mae_vit_huge_patch14_dec512d8b", "sincos_2d", "sinusoid_table"]

"""Models on mae_kernels' fused ops: the official MAE (MaskedAutoencoderViT) and mae_st's spatiotemporal video MAE
(VideoMaskedAutoencoderViT), with their configurations."""
from .mae import (MODELS, MaskedAutoencoderViT, mae_vit_base_patch16, mae_vit_base_patch16_dec512d8b,
                  mae_vit_huge_patch14, mae_vit_huge_patch14_dec512d8b, mae_vit_large_patch16,
                  mae_vit_large_patch16_dec512d8b, mae_vit_tiny)
from .pos_embed import sincos_2d, sinusoid_table
from .video_mae import (VIDEO_MODELS, VideoMaskedAutoencoderViT, mae_st_vit_base_patch16, mae_st_vit_huge_patch14,
                        mae_st_vit_large_patch16, mae_st_vit_tiny)

__all__ = ["MODELS", "MaskedAutoencoderViT", "mae_vit_base_patch16", "mae_vit_large_patch16",
           "mae_vit_huge_patch14", "mae_vit_tiny", "mae_vit_base_patch16_dec512d8b",
           "mae_vit_large_patch16_dec512d8b", "mae_vit_huge_patch14_dec512d8b", "sincos_2d", "sinusoid_table",
           "VIDEO_MODELS", "VideoMaskedAutoencoderViT", "mae_st_vit_base_patch16", "mae_st_vit_large_patch16",
           "mae_st_vit_huge_patch14", "mae_st_vit_tiny"]

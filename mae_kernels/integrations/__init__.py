"""Drop-ins for other MAE implementations: official (facebookresearch/mae models_mae structure), transformers
(ViTMAEForPreTraining), and auto (mae_kernels.apply: recognises the family and calls the right one)."""

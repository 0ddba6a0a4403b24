"""Drop-ins for other MAE implementations (transformers' ViTMAEForPreTraining)."""

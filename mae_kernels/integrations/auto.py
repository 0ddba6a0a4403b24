"""mae_kernels.apply(model): one entry point for every supported MAE family; unapply(model) undoes it.

Families, recognised in this order:
- mae_kernels.models.MaskedAutoencoderViT: sets use_fused_ops = True;
- transformers ViTMAEForPreTraining / ViTMAEModel: integrations.transformers.patch_vit_mae;
- transformers VideoMAEForPreTraining / VideoMAEModel: integrations.transformers.patch_videomae;
- the official models_mae.MaskedAutoencoderViT, or any model with its structure: integrations.official.patch_mae.
transformers is never imported here: its models are recognised through the module already loaded.
"""
import sys

from . import official

_HF_IMAGE = ("ViTMAEForPreTraining", "ViTMAEModel")
_HF_VIDEO = ("VideoMAEForPreTraining", "VideoMAEModel")


def _hf_instance(model, names):
    tf = sys.modules.get("transformers")
    if tf is None:  # no transformers model can exist without the module loaded
        return False
    return any(isinstance(model, getattr(tf, n, ())) for n in names)


def _family(model):
    from ..models.mae import MaskedAutoencoderViT

    if isinstance(model, MaskedAutoencoderViT):
        return "mae_kernels"
    if _hf_instance(model, _HF_IMAGE):
        return "transformers.ViTMAE"
    if _hf_instance(model, _HF_VIDEO):
        return "transformers.VideoMAE"
    if not official.missing(model):
        return "official"
    wrapped = getattr(model, "module", None)  # DistributedDataParallel
    wrapped = getattr(model, "_orig_mod", None) if wrapped is None else wrapped  # torch.compile
    hint = (f"; it wraps a {type(wrapped).__name__}: apply to the model before wrapping it"
            if wrapped is not None else "")
    raise TypeError(f"mae_kernels.apply: expected mae_kernels.models.MaskedAutoencoderViT, a transformers "
                    f"ViTMAEForPreTraining / ViTMAEModel or VideoMAEForPreTraining / VideoMAEModel, or a model with "
                    f"the official models_mae structure, got "
                    f"{type(model).__module__}.{type(model).__qualname__} (official structure lacks: "
                    f"{', '.join(official.missing(model))}){hint}")


def _set_fused(model, fused):
    family = _family(model)
    if family == "mae_kernels":
        model.use_fused_ops = fused
    elif family == "transformers.ViTMAE":
        from . import transformers  # our HF patch module, loaded only for HF models

        (transformers.patch_vit_mae if fused else transformers.unpatch_vit_mae)(model)
    elif family == "transformers.VideoMAE":
        from . import transformers

        (transformers.patch_videomae if fused else transformers.unpatch_videomae)(model)
    else:
        (official.patch_mae if fused else official.unpatch_mae)(model)
    return model


def apply(model):
    """Patch `model` in place to run mae_kernels' fused ops; returns it. Raises TypeError naming what it got when
    the model is of no supported family."""
    return _set_fused(model, True)


def unapply(model):
    """Undo apply: the model runs its own eager code again (ours: use_fused_ops = False)."""
    return _set_fused(model, False)

"""Patch a HuggingFace transformers ViTMAEForPreTraining in place to run mae_kernels' fused ops:
masking + patch embedding of the kept patches only (random_masked_patch_embed), the mask-token unshuffle
(unshuffle_with_mask_tokens) and the masked loss (masked_mse_loss).

    model = ViTMAEForPreTraining.from_pretrained("facebook/vit-mae-base")
    patch_vit_mae(model)            # same outputs for the same `noise`; unpatch_vit_mae(model) undoes it

Outputs equal the unpatched model's for the same noise, up to summation order; masks are identical unless the
noise has ties (HF's argsort is not stable; mae_kernels breaks ties by lower index). Written against
transformers 5.x (decoder layers called as layer(hidden_states)); output_attentions / output_hidden_states of
the decoder are not produced by the patched decoder.
"""
import types

import mae_kernels

from ..models import fused

_PATCHED = "_mae_kernels_patched"


def _embeddings_forward(self, pixel_values, noise=None, interpolate_pos_encoding=False):
    height, width = pixel_values.shape[2:]
    proj = self.patch_embeddings.projection
    if pixel_values.shape[1] != self.patch_embeddings.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set in the "
                         f"configuration. Expected {self.patch_embeddings.num_channels} but got "
                         f"{pixel_values.shape[1]}.")
    if interpolate_pos_encoding:
        L = (height // self.patch_size) * (width // self.patch_size)
        dummy = pixel_values.new_empty(1, L + 1, self.position_embeddings.shape[-1])  # only its shape is read
        pos = self.interpolate_pos_encoding(dummy, height, width)
    else:
        if height != self.image_size[0] or width != self.image_size[1]:
            raise ValueError(f"Input image size ({height}*{width}) doesn't match model"
                             f" ({self.image_size[0]}*{self.image_size[1]}).")
        pos = self.position_embeddings
    return fused.encoder_tokens(pixel_values, proj, self.cls_token, pos, float(self.config.mask_ratio), noise)


def _decoder_forward(self, hidden_states, ids_restore, interpolate_pos_encoding=False, **_):
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEDecoderOutput

    hidden_states = self.decoder_embed(hidden_states)
    if interpolate_pos_encoding:
        dummy = hidden_states.new_empty(1, ids_restore.shape[1] + 1, hidden_states.shape[-1])
        pos = self.interpolate_pos_encoding(dummy)
    else:
        pos = self.decoder_pos_embed
    hidden_states = mae_kernels.unshuffle_with_mask_tokens(hidden_states, self.mask_token, ids_restore, pos)
    for layer in self.decoder_layers:
        out = layer(hidden_states)
        hidden_states = out[0] if isinstance(out, tuple) else out
    logits = self.decoder_pred(self.decoder_norm(hidden_states))[:, 1:, :]
    return ViTMAEDecoderOutput(logits=logits)


def _pretraining_forward(self, pixel_values=None, noise=None, interpolate_pos_encoding=None, return_dict=None,
                         **kwargs):
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEForPreTrainingOutput

    outputs = self.vit(pixel_values, noise=noise, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
    logits = self.decoder(outputs.last_hidden_state, outputs.ids_restore,
                          interpolate_pos_encoding=bool(interpolate_pos_encoding)).logits
    loss = mae_kernels.masked_mse_loss(logits, pixel_values, outputs.mask, self.config.patch_size,
                                       norm_pix_loss=bool(self.config.norm_pix_loss))
    result = ViTMAEForPreTrainingOutput(loss=loss, logits=logits, mask=outputs.mask,
                                        ids_restore=outputs.ids_restore, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)
    return result.to_tuple() if return_dict is False else result


def patch_vit_mae(model):
    """Make a ViTMAEForPreTraining (or a ViTMAEModel: embeddings only) use the fused ops, in place; returns it."""
    if getattr(model, _PATCHED, False):
        return model
    vit = model.vit if hasattr(model, "vit") else model
    if not hasattr(vit, "embeddings") or not hasattr(vit.embeddings, "patch_embeddings"):
        raise TypeError(f"model must be a transformers ViTMAEForPreTraining or ViTMAEModel, got "
                        f"{type(model).__name__}")
    vit.embeddings.forward = types.MethodType(_embeddings_forward, vit.embeddings)
    if hasattr(model, "decoder"):
        model.decoder.forward = types.MethodType(_decoder_forward, model.decoder)
        model.forward = types.MethodType(_pretraining_forward, model)
    setattr(model, _PATCHED, True)
    return model


def unpatch_vit_mae(model):
    """Undo patch_vit_mae (the class methods take over again)."""
    vit = model.vit if hasattr(model, "vit") else model
    for m in (vit.embeddings, getattr(model, "decoder", None), model):
        if m is not None:
            m.__dict__.pop("forward", None)
    model.__dict__.pop(_PATCHED, None)
    return model

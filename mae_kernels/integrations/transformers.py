"""Patch HuggingFace transformers MAE models in place to run mae_kernels' fused ops.

ViTMAEForPreTraining / ViTMAEModel (patch_vit_mae): masking + patch embedding of the kept patches only
(random_masked_patch_embed), the mask-token unshuffle (unshuffle_with_mask_tokens) and the masked loss
(masked_mse_loss). VideoMAEForPreTraining / VideoMAEModel (patch_videomae, below): the given bool_masked_pos as
indices (mask_to_indices), the Conv3d embedding of the kept tubelets only (masked_patch_embed), the decoder input
(append_mask_tokens) and the loss (masked_mse_loss with HF's per-channel target).

    model = ViTMAEForPreTraining.from_pretrained("facebook/vit-mae-base")
    patch_vit_mae(model)            # same outputs for the same `noise`; unpatch_vit_mae(model) undoes it
    video = VideoMAEForPreTraining.from_pretrained("MCG-NJU/videomae-base")
    patch_videomae(video)           # same outputs for the same bool_masked_pos; unpatch_videomae(video) undoes it

ViTMAE outputs equal the unpatched model's for the same noise, up to summation order; masks are identical unless
the noise has ties (HF's argsort is not stable; mae_kernels breaks ties by lower index). Written against
transformers 5.x (decoder layers called as layer(hidden_states)); output_attentions / output_hidden_states of
the decoder are not produced by the patched decoder.
"""
import types

import torch

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


# --- HF VideoMAE (VideoMAEForPreTraining, VideoMAEModel) -------------------------------------------------------
#
# The patched forward, for bool_masked_pos [N, L] (True = masked, K kept tubelets per row):
#   mask_to_indices(bool_masked_pos, num_kept)   -> ids_keep (kept ascending = x[~mask] order), ids_restore, mask
#   masked_patch_embed(pixel_values.permute(0, 2, 1, 3, 4), ids_keep, Conv3d weight, bias, sin-cos table)
#                                                -> the encoder input, the kept tubelets only (HF embeds all L)
#   HF's encoder layers and final LayerNorm, unchanged (hidden_states / attentions captured as HF does)
#   append_mask_tokens(encoder_to_decoder(latent), mask_token, ids_keep, masked positions, decoder table)
#                                                -> HF's x_full: visible rows, then mask tokens, ascending
#   HF's decoder, unchanged                      -> logits [N, L - K, u*p*p*C] of the masked tubelets, ascending
#   masked_mse_loss(logits, pixel_values read in place, ...) -> HF's MSELoss against its labels, fp32

_VIDEO_PATCHED = "_mae_kernels_videomae_patched"
_POS = "_mae_kernels_pos"  # non-persistent buffers: the fixed sin-cos tables on the model's device
_NUM_KEPT = "_mae_kernels_num_kept"
_DDP_IGNORE = "_ddp_params_and_buffers_to_ignore"  # DistributedDataParallel reads it


def _hf_video():
    """The transformers pieces the patched forwards reuse (HF's decorators: return_dict, output_hidden_states and
    output_attentions work as in the unpatched model)."""
    from transformers.models.videomae import modeling_videomae as m
    from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
    from transformers.utils.output_capturing import capture_outputs
    return m, can_return_tuple, merge_with_config_defaults, capture_outputs


def _video_tubelet(embeddings):
    """(u, ph, pw) of the Conv3d tubelet embedding."""
    conv = embeddings.patch_embeddings.projection
    return tuple(int(k) for k in conv.kernel_size)


def _check_video_pixel_values(embeddings, pixel_values):
    """HF's checks (channels, image size), plus the frame count that HF leaves to a broadcasting error."""
    pe = embeddings.patch_embeddings
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
        got = f"shape {tuple(pixel_values.shape)}" if isinstance(pixel_values, torch.Tensor) else \
            type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a video batch [N, T, C, H, W], got {got}")
    _, T, C, H, W = pixel_values.shape
    if C != pe.num_channels:
        raise ValueError("Make sure that the channel dimension of the pixel values match with the one set in the "
                         f"configuration. Expected {pe.num_channels} but got {C}.")
    if H != pe.image_size[0] or W != pe.image_size[1]:
        raise ValueError(f"Input image size ({H}*{W}) doesn't match model ({pe.image_size[0]}*{pe.image_size[1]}).")
    u = pe.tubelet_size
    L = embeddings.num_patches
    if (T // u) * (H // pe.patch_size[0]) * (W // pe.patch_size[1]) != L or T % u:
        raise ValueError(f"pixel_values must have T = config.num_frames = {embeddings.config.num_frames} frames "
                         f"(L = {L} tubelets of {u} frames, as the position table), got T = {T}")


def _video_mask_indices(model, pixel_values, bool_masked_pos, num_kept):
    """mask_to_indices of bool_masked_pos, checked against pixel_values; num_kept: this call's, else the one given
    to patch_videomae, else read from the mask (one host sync; not under torch.compile)."""
    from ..ops._validate import check_tensor

    N = pixel_values.shape[0]
    L = model.embeddings.num_patches
    check_tensor("bool_masked_pos", bool_masked_pos, ndim=2, dtypes=(torch.bool,), device=pixel_values.device,
                 shape=(N, L))
    if num_kept is None:
        num_kept = getattr(model, _NUM_KEPT, None)
    return mae_kernels.mask_to_indices(bool_masked_pos, num_kept)


def _video_embed_dtype(pixel_values):
    """The dtype of HF's Conv3d output (the autocast dtype under autocast), to which HF casts its table."""
    device_type = pixel_values.device.type
    if torch.is_autocast_enabled(device_type) and pixel_values.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return pixel_values.dtype


def _video_embed(model, pixel_values, ids_keep):
    """HF's embeddings(pixel_values, bool_masked_pos) for the kept tubelets ids_keep: [N, K, D]."""
    conv = model.embeddings.patch_embeddings.projection
    pos = getattr(model.embeddings, _POS).to(_video_embed_dtype(pixel_values))  # HF: table.type_as(conv output)
    # HF's [N, T, C, H, W] read as [N, C, T, H, W] through a permuted view: no copy
    return mae_kernels.masked_patch_embed(pixel_values.permute(0, 2, 1, 3, 4), ids_keep, conv.weight, conv.bias, pos)


def _video_model_forward(self, pixel_values, bool_masked_pos=None, num_kept=None, ids_keep=None, **kwargs):
    """VideoMAEModel.forward with the fused embedding of the kept tubelets (bool_masked_pos given); without a mask
    HF's own embeddings run (nothing to fuse). num_kept: the kept count of every row (no host sync); ids_keep: the
    kept tubelets [N, K] when the caller already has them (the patched VideoMAEForPreTraining)."""
    if bool_masked_pos is None and ids_keep is None:
        embedding_output = self.embeddings(pixel_values, None)
    else:
        _check_video_pixel_values(self.embeddings, pixel_values)
        if ids_keep is None:
            ids_keep = _video_mask_indices(self, pixel_values, bool_masked_pos, num_kept)[0]
        embedding_output = _video_embed(self, pixel_values, ids_keep)
    sequence_output = self.encoder(embedding_output).last_hidden_state
    if self.layernorm is not None:
        sequence_output = self.layernorm(sequence_output)
    return _hf_video()[0].BaseModelOutput(last_hidden_state=sequence_output)


def _video_target(config):
    """masked_mse_loss's keywords for HF's labels (MAE_SPEC_VIDEO.md, HF section). C = 3: un-normalised with
    ImageNet's mean / std first; norm_pix_loss: per patch and channel, (v - mean) / (std_unbiased + 1e-6)."""
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    kw = dict(norm_pix_loss=bool(config.norm_pix_loss), per_channel=bool(config.norm_pix_loss), eps=1e-6)
    if config.num_channels == 3:
        kw.update(pixel_mean=list(IMAGENET_DEFAULT_MEAN), pixel_std=list(IMAGENET_DEFAULT_STD))
    return kw


def _video_pretraining_forward(self, pixel_values, bool_masked_pos=None, num_kept=None, **kwargs):
    """VideoMAEForPreTraining.forward on the fused ops (module comment above). num_kept: the kept count of every
    row of bool_masked_pos (no host sync; torch.compile needs it, or patch_videomae(model, num_kept=...))."""
    m = _hf_video()[0]
    if bool_masked_pos is None:
        raise ValueError("VideoMAEForPreTraining needs bool_masked_pos [N, L] (True = masked): one must provide a "
                         "boolean mask")
    if not self.config.norm_pix_loss and self.config.num_channels != 3:  # HF's labels raise the same
        raise ValueError("Can't unnormalize non-RGB images. Consider setting config.norm_pix_loss to True "
                         f"(num_channels = {self.config.num_channels}).")
    encoder = self.videomae
    _check_video_pixel_values(encoder.embeddings, pixel_values)
    ids_keep, ids_restore, mask = _video_mask_indices(encoder, pixel_values, bool_masked_pos, num_kept)
    K, L = ids_keep.shape[1], ids_restore.shape[1]
    if K == L:
        raise ValueError(f"bool_masked_pos must mask at least one tubelet per row (the loss is taken over the "
                         f"masked ones), got all L = {L} kept")
    outputs = encoder(pixel_values, bool_masked_pos=bool_masked_pos, ids_keep=ids_keep, **kwargs)
    latent = self.encoder_to_decoder(outputs.last_hidden_state)
    # ids_shuffle: kept ascending, then masked ascending (mask_to_indices' order); its tail = HF's masked rows
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    pos = getattr(self, _POS).to(pixel_values.dtype)  # HF: table.type_as(pixel_values)
    x_full = mae_kernels.append_mask_tokens(latent, self.mask_token, ids_keep, ids_shuffle[:, K:], pos)
    logits = self.decoder(x_full, L - K).logits
    # HF's labels are computed without grad from pixel_values: data, read in place ([N, C, T, H, W] view)
    loss = mae_kernels.masked_mse_loss(logits, pixel_values.detach().permute(0, 2, 1, 3, 4), mask,
                                       _video_tubelet(encoder.embeddings), ids_shuffle=ids_shuffle,
                                       **_video_target(self.config))
    return m.VideoMAEForPreTrainingOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                          attentions=outputs.attentions)


def _check_videomae(model, encoder, num_kept):
    """Everything the fused ops need, at patch time (names what was found)."""
    from ..ops._validate import check_int

    emb = getattr(encoder, "embeddings", None)
    pe = getattr(emb, "patch_embeddings", None)
    conv = getattr(pe, "projection", None)
    if not isinstance(conv, torch.nn.Conv3d) or not hasattr(emb, "position_embeddings"):
        raise TypeError(f"model must be a transformers VideoMAEForPreTraining or VideoMAEModel (embeddings with a "
                        f"Conv3d patch_embeddings.projection and a position_embeddings table), got "
                        f"{type(model).__name__} with projection {type(conv).__name__}")
    u, ph, pw = (int(k) for k in conv.kernel_size)
    problems = []
    if tuple(conv.stride) != (u, ph, pw) or any(conv.padding) or tuple(conv.dilation) != (1, 1, 1) \
            or conv.groups != 1 or conv.padding_mode != "zeros":
        problems.append(f"the Conv3d must have stride = kernel_size, no padding, dilation 1, one group: got "
                        f"kernel_size {conv.kernel_size}, stride {conv.stride}, padding {conv.padding}, dilation "
                        f"{conv.dilation}, groups {conv.groups}, padding_mode {conv.padding_mode!r}")
    cfg = encoder.config
    H, W = pe.image_size
    T = int(cfg.num_frames)
    if T % u or H % ph or W % pw:
        problems.append(f"the fused ops take whole tubelets: num_frames, image_size must be multiples of "
                        f"(tubelet_size, patch_size) = {(u, ph, pw)}, got num_frames {T}, image_size {(H, W)}")
    L = (T // u) * (H // ph) * (W // pw)
    if tuple(emb.position_embeddings.shape) != (1, L, conv.out_channels):
        problems.append(f"position_embeddings must be the [1, L={L}, D={conv.out_channels}] table, got "
                        f"{tuple(emb.position_embeddings.shape)}")
    if hasattr(model, "decoder"):
        p = model.config.patch_size
        if (model.config.tubelet_size, p, p) != (u, ph, pw):
            problems.append(f"the loss patchifies with (config.tubelet_size, config.patch_size, config.patch_size) "
                            f"= {(model.config.tubelet_size, p, p)}, which must equal the Conv3d kernel "
                            f"{(u, ph, pw)}")
        if tuple(model.position_embeddings.shape) != (1, L, model.config.decoder_hidden_size):
            problems.append(f"the decoder position_embeddings must be [1, L={L}, "
                            f"{model.config.decoder_hidden_size}], got {tuple(model.position_embeddings.shape)}")
    if problems:
        raise ValueError(f"patch_videomae: {type(model).__name__} has a configuration the fused ops do not "
                         f"support: {'; '.join(problems)}")
    if num_kept is not None:
        check_int("num_kept", num_kept, minimum=0)
        if num_kept > L:
            raise ValueError(f"num_kept must be at most L = {L} tubelets, got {num_kept}")


def patch_videomae(model, num_kept=None):
    """Make a transformers VideoMAEForPreTraining (or a VideoMAEModel: the encoder only) run mae_kernels' fused
    ops, in place; returns it. Same forward signature and outputs (loss, logits, hidden_states / attentions when
    asked); the state_dict does not change. Forwards take an extra keyword num_kept: the kept (False) count of
    every row of bool_masked_pos; given (here as the default, or per call) the mask is turned into indices without
    a host sync, and torch.compile needs it. unpatch_videomae(model) undoes it."""
    if getattr(model, _VIDEO_PATCHED, False):
        if num_kept is not None:
            encoder = model.videomae if hasattr(model, "videomae") else model
            _check_videomae(model, encoder, num_kept)
            setattr(encoder, _NUM_KEPT, num_kept)
        return model
    m, can_return_tuple, merge_with_config_defaults, capture_outputs = _hf_video()
    if not isinstance(model, (m.VideoMAEForPreTraining, m.VideoMAEModel)):
        raise TypeError(f"model must be a transformers VideoMAEForPreTraining or VideoMAEModel, got "
                        f"{type(model).__name__}")
    encoder = model.videomae if isinstance(model, m.VideoMAEForPreTraining) else model
    _check_videomae(model, encoder, num_kept)
    device = encoder.embeddings.patch_embeddings.projection.weight.device
    # Non-persistent: the state_dict does not change; the tables follow model.to() (HF copies them every call).
    encoder.embeddings.register_buffer(_POS, encoder.embeddings.position_embeddings.detach().to(device),
                                       persistent=False)
    setattr(encoder, _NUM_KEPT, num_kept)
    # HF's own decorators, as on VideoMAEModel.forward: output_hidden_states / output_attentions, return_dict
    forward = merge_with_config_defaults(capture_outputs(tie_last_hidden_states=False)(_video_model_forward))
    encoder.forward = types.MethodType(forward, encoder)
    if encoder is not model:
        model.register_buffer(_POS, model.position_embeddings.detach().to(device), persistent=False)
        model.forward = types.MethodType(can_return_tuple(_video_pretraining_forward), model)
    # The tables are the same fixed function on every rank: DistributedDataParallel(model) need not broadcast them
    # at every step (buffers are, by default).
    setattr(model, _DDP_IGNORE, list(getattr(model, _DDP_IGNORE, ())) + _table_names(model))
    setattr(model, _VIDEO_PATCHED, True)
    return model


def _table_names(model):
    return [name for name, _ in model.named_buffers() if name.rsplit(".", 1)[-1] == _POS]


def unpatch_videomae(model):
    """Undo patch_videomae: the class methods take over again, the tables it added are removed."""
    encoder = model.videomae if hasattr(model, "videomae") else model
    tables = set(_table_names(model))
    ignore = [name for name in getattr(model, _DDP_IGNORE, ()) if name not in tables]
    if ignore:
        setattr(model, _DDP_IGNORE, ignore)
    else:
        model.__dict__.pop(_DDP_IGNORE, None)
    for module in (encoder, model):
        module.__dict__.pop("forward", None)
        module.__dict__.pop(_NUM_KEPT, None)
        module._buffers.pop(_POS, None)
    encoder.embeddings._buffers.pop(_POS, None)
    model.__dict__.pop(_VIDEO_PATCHED, None)
    return model

"""Input validation shared by every op and backend: errors name the argument, what was expected and what came."""
import torch


def check_tensor(name, t, ndim=None, dtypes=None, device=None, shape=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {t.dim()} (shape {tuple(t.shape)})")
    if shape is not None:
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is not None and want != got:
                raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(t.shape)} (dimension {i})")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (the device of the other inputs), got {t.device}")


def _fmt(shape):
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_mask_ratio(mask_ratio):
    if isinstance(mask_ratio, torch.Tensor) or not isinstance(mask_ratio, (int, float)):
        raise TypeError(f"mask_ratio must be a Python float in [0, 1), got {type(mask_ratio).__name__}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

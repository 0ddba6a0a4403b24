"""One module per op: cases/<op>.py defines

    OP      the op's name (torch.ops.mae_kernels.<OP>, mae_kernels/triton/<OP>.py)
    SHAPES  {"cuda": [shape kwargs, ...], "cpu": [...]}: the official benchmark shapes per device type
    SMOKE   [shape kwargs, ...]: tiny shapes for CI smoke runs and `mae-kernels bench --quick`
    setup(device, **shape) -> harness.Case

Adding an op = adding its module here (it is found by name; no list to edit)."""
import importlib
import pkgutil


def names():
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name):
    if name not in names():
        raise ValueError(f"unknown op {name!r}: benchmark cases exist for {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def shapes(module, device_type, quick=False):
    return module.SMOKE if quick else module.SHAPES.get(device_type, module.SHAPES["cpu"])

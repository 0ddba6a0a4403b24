"""Builds mae_kernels and its extension mae_kernels._C. Switches: see python/build_config.py."""
import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from python.build_config import extension_kwargs  # noqa: E402

ext_cls, kwargs = extension_kwargs()

from torch.utils.cpp_extension import BuildExtension  # noqa: E402  (after CUDA_HOME is settled)

setup(
    packages=find_packages(include=["mae_kernels", "mae_kernels.*"]),
    ext_modules=[ext_cls(**kwargs)],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

"""torch.library ops of mae_kernels: one module per op (schemas of the compiled ops are in csrc/mae_kernels.cpp;
the Triton variants, fake kernels and autograd are registered here)."""

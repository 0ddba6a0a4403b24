"""Triton kernels and their launchers (plain functions taking and returning tensors), one module per op."""

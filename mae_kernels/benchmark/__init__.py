"""Benchmark harness of mae_kernels (`mae-kernels bench`, bench/test_bench_<op>.py).

harness.py times one op for one provider and mode; cases/<op>.py holds each op's setup (inputs, the reference
and public functions, official and smoke shapes, bytes moved); environment.py names the device and versions;
report.py prints the table and writes the JSON and the plot. train_step.py times whole training steps of the
model (eager, fused, torch.compile of each) for `mae-kernels bench-step` (step_cli.py). See bench/README.md."""

"""The benchmark harness itself: the CLI writes its table, JSON and plot; unavailable providers say why;
checks catch a wrong provider."""
import json

import pytest
import torch

from mae_kernels.benchmark import cases, cli, harness


def test_cli_quick_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="matplotlib (the PNG) is not installed")
    # CPU tensors even on a GPU machine: the cuda provider is then unavailable, with the reason.
    rc = cli.main(["--quick", "--device", "cpu", "--providers", "reference,cpu,cuda", "--out", str(tmp_path),
                   "--note", "test"])
    assert rc == 0
    (json_path,) = tmp_path.glob("*-quick.json")
    assert json_path.with_suffix(".png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    assert data["torch"] == torch.__version__ and data["settings"]["note"] == "test"
    ops = {r["op"] for r in data["rows"]}
    assert {"random_masking", "masked_patchify", "masked_patch_embed", "unshuffle_with_mask_tokens",
            "masked_mse_loss"} <= ops
    ok = {(r["op"], r["provider"], r["mode"]) for r in data["rows"] if r["status"] == "ok"}
    modes = {o: cases.load(o).setup("cpu", **cases.load(o).SMOKE[0]).modes for o in ops}  # index ops: forward
    assert ok == {(o, p, m) for o in ops for p in ("reference", "cpu") for m in modes[o]}
    assert all(r["status"] == "unavailable" and "forward only" in r["reason"] for r in data["rows"]
               if r["provider"] in ("reference", "cpu") and r["mode"] not in modes[r["op"]])
    for r in data["rows"]:
        if r["status"] == "ok":
            assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["gbps"] > 0
            assert r["peak_mb"] is None  # CPU: n/a
            assert r["provider"] != "reference" or r["speedup"] == 1.0
    cuda = [r for r in data["rows"] if r["provider"] == "cuda"]
    assert len(cuda) >= len(ops)  # one row per op and shape, each unavailable with the reason
    assert all(r["status"] == "unavailable" and "cuda" in r["reason"] for r in cuda)
    out = capsys.readouterr().out
    assert "median ms" in out and "unavailable: random_masking" in out


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        cli.main(["--providers", "reference,fastest"])
    with pytest.raises(SystemExit):
        cli.main(["--ops", "no_such_op"])


def test_check_catches_a_wrong_provider():
    module = cases.load("random_masking")
    case = module.setup("cpu", **module.SMOKE[0])
    harness.check(case, case.reference)

    def wrong(x, noise):
        x_masked, mask, ids_restore = case.reference(x, noise)
        return x_masked * 1.001, mask, ids_restore
    with pytest.raises(AssertionError, match="output differs"):
        harness.check(case, wrong)


def test_every_case_module_is_complete():
    for name in cases.names():
        module = cases.load(name)
        assert module.OP == name and module.SHAPES["cpu"] and module.SHAPES["cuda"] and module.SMOKE
        case = module.setup("cpu", **module.SMOKE[0])
        assert set(case.bytes) == set(harness.MODES) and all(case.bytes[m] > 0 for m in case.modes)

"""`mae-kernels bench-step` (mae_kernels/benchmark/train_step.py, step_cli.py): it writes its JSON and table,
catches a provider whose loss differs from eager's, honours its time budget, and judges the targets right."""
import json

import pytest
import torch

import mae_kernels
from mae_kernels.benchmark import step_cli, train_step


def _quick(tmp_path, *extra):
    rc = step_cli.main(["--quick", "--device", "cpu", "--providers", "eager,fused", "--out", str(tmp_path),
                        "--note", "test", *extra])
    (path,) = tmp_path.glob("*-train_step-quick.json")
    return rc, json.loads(path.read_text())


def test_quick_run_writes_json_and_table(tmp_path, capsys):
    rc, data = _quick(tmp_path)
    assert rc == 0
    assert data["torch"] == torch.__version__ and data["settings"]["note"] == "test"
    assert data["targets_apply"] is False and "fp32" in data["device_note"]
    rows = {r["provider"]: r for r in data["rows"]}
    assert set(rows) == {"eager", "fused"}
    for r in rows.values():
        assert r["status"] == "ok" and r["config"] == "tiny" and r["batch"] == 4 and r["dtype"] == "fp32"
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["steps"] == 2
        assert r["images_per_s"] == pytest.approx(4 / r["median_ms"] * 1e3)
        assert r["peak_mb"] is None and r["step_peak_mb"] > 0  # CPU: profiler allocation records only
        assert r["state_mb"] > 0 and r["first_step_s"] > 0
    assert rows["eager"]["speed_vs_eager"] == 1.0 and rows["eager"]["peak_vs_eager"] == 1.0
    assert rows["fused"]["first_loss"] == pytest.approx(rows["eager"]["first_loss"], rel=1e-5)
    assert rows["fused"]["loss_checked_against_eager"] and not rows["eager"]["loss_checked_against_eager"]
    (summary,) = data["summary"]
    assert set(summary["targets"]) == {"speed_vs_eager", "peak_vs_eager", "speed_vs_compile"}
    assert summary["targets"]["speed_vs_compile"]["met"] is None  # no compile provider in this run
    out = capsys.readouterr().out
    assert "images/s" in out and "tiny: fused" in out
    (path,) = tmp_path.glob("*-train_step-quick.json")
    assert step_cli.main(["--markdown", str(path)]) == 0
    md = capsys.readouterr().out.splitlines()
    assert len(md) == 4 and md[2].startswith("| tiny (N=4, fp32) | eager |")


def test_wrong_loss_is_caught(tmp_path, monkeypatch):
    fused_loss = mae_kernels.masked_mse_loss
    monkeypatch.setattr(mae_kernels, "masked_mse_loss", lambda *a, **k: fused_loss(*a, **k) * 1.01)
    rc, data = _quick(tmp_path)
    assert rc == 1
    fused = next(r for r in data["rows"] if r["provider"] == "fused")
    assert fused["status"] == "failed" and "differs from eager" in fused["reason"]


def test_time_budget_skips_providers(tmp_path):
    rc, data = _quick(tmp_path, "--time-budget", "0")
    assert rc == 0
    assert all(r["status"] == "skipped" and "time budget" in r["reason"] for r in data["rows"])


def test_targets_judged():
    rows = [dict(config="c", provider=p, status="ok", median_ms=ms, peak_mb=mb, step_peak_mb=None)
            for p, ms, mb in [("eager", 110.0, 1000.0), ("fused", 100.0, 900.0), ("compile", 100.0, 950.0)]]
    (summary,) = train_step.summarize(rows)
    t = summary["targets"]
    assert t["speed_vs_eager"]["value"] == pytest.approx(1.1) and t["speed_vs_eager"]["met"]
    assert t["peak_vs_eager"]["value"] == pytest.approx(0.9) and t["peak_vs_eager"]["met"]
    assert t["peak_vs_eager"]["of"] == "peak_mb"
    assert t["speed_vs_compile"]["value"] == pytest.approx(1.0) and not t["speed_vs_compile"]["met"]  # tie: not ahead
    rows[1]["peak_mb"] = 901.0
    assert not train_step.summarize(rows)[0]["targets"]["peak_vs_eager"]["met"]


def test_rejects_unknown_names():
    with pytest.raises(SystemExit):
        step_cli.main(["--providers", "eager,fastest"])
    with pytest.raises(SystemExit):
        step_cli.main(["--configs", "huge"])
    with pytest.raises(ValueError, match="provider must be one of"):
        train_step.TrainStep(train_step.CONFIGS["tiny"], "jit", *train_step.make_inputs(
            train_step.CONFIGS["tiny"], 2, "cpu"))

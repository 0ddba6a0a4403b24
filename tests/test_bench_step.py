"""`mae-kernels bench-step` (mae_kernels/benchmark/train_step.py, step_cli.py): it writes its JSON and table,
catches a provider whose loss differs from eager's, honours its time budget, and judges the targets right."""
import json
import pathlib
import re

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


def test_quick_video_run(tmp_path, capsys):
    rc = step_cli.main(["--quick", "--configs", "video-tiny", "--device", "cpu", "--providers", "eager,fused",
                        "--out", str(tmp_path)])
    assert rc == 0
    (path,) = tmp_path.glob("*-train_step-quick.json")
    data = json.loads(path.read_text())
    assert data["settings"]["mask_ratio"] == {"video-tiny": 0.9}
    assert data["settings"]["video"]["video-tiny"]["num_frames"] == 8
    rows = {r["provider"]: r for r in data["rows"]}
    for r in rows.values():
        assert r["status"] == "ok" and r["unit"] == "clips" and r["num_frames"] == 8 and r["batch"] == 4
        assert r["mask_ratio"] == 0.9 and r["decoder_mask_ratio"] == 0.0 and "images_per_s" not in r
        assert r["clips_per_s"] == pytest.approx(4 / r["median_ms"] * 1e3)
        assert r["frames_per_s"] == pytest.approx(8 * r["clips_per_s"]) and r["step_peak_mb"] > 0
    assert rows["fused"]["loss_checked_against_eager"]
    assert rows["fused"]["first_loss"] == pytest.approx(rows["eager"]["first_loss"], rel=1e-5)
    (summary,) = data["summary"]
    assert summary["targets_apply"] is True and set(summary["targets"]) == {"speed_vs_eager", "peak_vs_eager"}
    assert summary["targets"]["speed_vs_eager"]["target"] == ">= 1.20"
    assert "videomae-b cuda" in json.dumps(data["targets_declared"])
    assert "video-tiny: fused targets:" in capsys.readouterr().out
    assert step_cli.main(["--markdown", str(path)]) == 0
    md = capsys.readouterr().out.splitlines()
    assert "clips/s" in md[0] and md[2].startswith("| video-tiny (N=4, fp32) | eager |")


def test_video_targets_judged():
    def rows(config, device_type, fused_ms):
        return [dict(config=config, provider=p, status="ok", median_ms=ms, peak_mb=None, step_peak_mb=mb,
                     device_type=device_type) for p, ms, mb in [("eager", 130.0, 100.0), ("fused", fused_ms, 90.0),
                                                                ("compile", 120.0, 95.0)]]
    (s,) = train_step.summarize(rows("videomae-b", "cuda", 100.0))
    assert s["targets_apply"] and set(s["targets"]) == {"speed_vs_eager", "speed_vs_compile"}
    assert s["targets"]["speed_vs_eager"]["met"] and s["targets"]["speed_vs_compile"]["met"]
    (s,) = train_step.summarize(rows("videomae-b", "cuda", 101.0))
    assert not s["targets"]["speed_vs_eager"]["met"]  # 1.29x < 1.3x
    (s,) = train_step.summarize(rows("videomae-b", "cpu", 100.0))
    assert s["targets"] == {} and not s["targets_apply"]  # no CPU target stated for VideoMAE-B
    (s,) = train_step.summarize(rows("video-tiny", "cpu", 110.0))
    assert s["targets_apply"] and s["targets"]["speed_vs_eager"]["value"] == pytest.approx(130 / 110)
    assert not s["targets"]["speed_vs_eager"]["met"] and s["targets"]["peak_vs_eager"]["met"]


def test_gpu_configs_build(monkeypatch):
    """The configs `make gpu-check` runs (python/gpu_check.sh's --configs, and the GPU defaults) build, on the
    meta device (no memory, no GPU), with the issue's shapes and their dual-masking options; a video model that
    ignores decoder_mask_ratio is refused."""
    args = step_cli.parse(["--device", "cuda", "--providers", "eager,fused"])
    assert {"videomae-b", "mae_st-l"} <= set(args.configs)
    script = (pathlib.Path(__file__).resolve().parents[1] / "python" / "gpu_check.sh").read_text()
    (listed,) = re.findall(r"bench-step .*\n\s*--configs (\S+)", script)
    names = listed.split(",")
    assert set(args.configs) <= set(names) and {"base-dual", "videomae-b-dual"} <= set(names)
    with torch.device("meta"):
        for name in names:
            config = train_step.CONFIGS[name]
            model = train_step.build_model(config, use_fused_ops=True, **config.dual_masking)
            assert getattr(model, "decoder_mask_ratio", 0.0) == config.decoder_mask_ratio
            if name in ("videomae-b", "mae_st-l"):
                assert model.input_size == (8, 14, 14) and model.num_frames == 16
        assert train_step.build_model(train_step.CONFIGS["videomae-b"]).mask_type == "tube"
    config = train_step.dataclasses.replace(train_step.CONFIGS["video-tiny"], decoder_mask_ratio=0.5)
    from mae_kernels.models import video_mae
    monkeypatch.setitem(video_mae.VIDEO_MODELS, "mae_st_vit_tiny", lambda **kw: torch.nn.Module())
    with pytest.raises(ValueError, match="does not take decoder_mask_ratio"):
        train_step.build_model(config, decoder_mask_ratio=0.5)

"""The embedded video demo's defaults (mae_kernels/video_pretrain.py): pixel targets and sin-cos positional
embeddings for the embedded clips (a readable figure after a few CPU minutes), mae_st's recipe with --data."""
import torch

from mae_kernels import video_pretrain
from mae_kernels.models.pos_embed import sincos_1d, sincos_2d


def test_demo_defaults_and_data_defaults():
    demo = video_pretrain.parse_args([])
    assert demo.norm_pix_loss is False and demo.pos_init == "sincos"
    data = video_pretrain.parse_args(["--data", "somewhere"])
    assert data.norm_pix_loss is True and data.pos_init == "mae_st"
    assert video_pretrain.parse_args(["--norm-pix-loss", "--pos-init", "mae_st"]).norm_pix_loss is True


def test_sincos_pos_init():
    args = video_pretrain.parse_args(["--input-size", "32", "--num-frames", "4"])
    model = video_pretrain.build_model(args)
    t, h, w = model.input_size  # (2, 4, 4)
    for prefix, D in (("", 192), ("decoder_", 128)):
        assert torch.equal(getattr(model, prefix + "pos_embed_spatial")[0], sincos_2d(D, (h, w)))
        assert torch.equal(getattr(model, prefix + "pos_embed_temporal")[0], sincos_1d(D, torch.arange(t)).float())
    joint = video_pretrain.VIDEO_MODELS["mae_st_vit_tiny"](img_size=32, num_frames=4, sep_pos_embed=False)
    video_pretrain.sincos_pos_init(joint)
    pos = joint.pos_embed[0, 1:]  # the cls row is left alone
    assert torch.allclose(pos[h * w + 5], sincos_2d(192, (h, w))[5] + sincos_1d(192, torch.arange(t))[1].float())
    mae_st = video_pretrain.build_model(video_pretrain.parse_args(["--input-size", "32", "--num-frames", "4",
                                                                    "--pos-init", "mae_st"]))
    assert mae_st.pos_embed_spatial.abs().max() < 0.15  # trunc_normal(std 0.02): 7.5 std, never reached


def test_demo_schedule_defaults():
    demo, data = video_pretrain.parse_args([]), video_pretrain.parse_args(["--data", "somewhere"])
    assert (demo.batch_size, demo.epochs, demo.blr) == (8, 16, 6.4e-2)  # 1024 steps at lr 2e-3
    assert (data.batch_size, data.epochs, data.blr) == (16, 8, 1.6e-3)
    assert video_pretrain.parse_args(["--batch-size", "4", "--epochs", "2"]).batch_size == 4

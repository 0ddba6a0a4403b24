"""Fixed 2-D sin-cos positional embeddings exactly as the official MAE (util/pos_embed.py), for any grid.

The official code meshes (w, h), so each token's vector is [sin(w*om) | cos(w*om) | sin(h*om) | cos(h*om)]
(column index first); published checkpoints depend on that order. Computed in float64, returned float32.
"""
import torch


def sincos_1d(embed_dim, pos):
    """[M] positions -> [M, embed_dim] = [sin(pos*om) | cos(pos*om)], om_i = 1 / 10000^(i / (embed_dim/2))."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim, grid_size, cls_token=False):
    """[(1 +) gh*gw, embed_dim] float32 for a (gh, gw) grid (or an int for a square one); cls row 0 is zero."""
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim must be a multiple of 4 for 2-D sin-cos embeddings, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    h, w = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                          indexing="ij")  # row-major tokens: l = h * gw + w
    emb = torch.cat([sincos_1d(embed_dim // 2, w), sincos_1d(embed_dim // 2, h)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def sinusoid_table(num_positions, embed_dim):
    """VideoMAE's fixed 1-D sin-cos table over the flat token index (get_sinusoid_encoding_table): [1, M, D]
    float32 (float64 maths, as its numpy code), pos[n, 2i] = sin(n / 10000^(2i / D)),
    pos[n, 2i + 1] = cos(n / 10000^(2i / D)); no cls row. For a video of L = t*h*w tokens it is the full table
    masked_patch_embed takes as pos_embed [1, L, D]."""
    if isinstance(num_positions, bool) or not isinstance(num_positions, int) or num_positions < 0:
        raise ValueError(f"num_positions must be an int >= 0, got {num_positions!r}")
    if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
        raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
    j = torch.arange(embed_dim, dtype=torch.float64)
    denom = torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / embed_dim)
    angle = torch.arange(num_positions, dtype=torch.float64)[:, None] / denom[None, :]
    table = torch.where(j.remainder(2) == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)

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

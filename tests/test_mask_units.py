"""mask_unit_indices (SimMIM / Hiera mask units) against a restatement: the kept tokens are exactly the tokens of
the units random masking keeps over the unit grid, in noise order of the units and ascending within a unit; the
outputs keep random_mask_indices' contract (ids_restore inverts the shuffle, mask 1 on the removed tokens)."""
import pytest
import torch

import mae_kernels
from mae_kernels.mask_units import mask_unit_indices


@pytest.mark.parametrize("grid, unit", [((8, 8), (2, 2)), ((6, 9), (3, 3)), ((4, 6, 6), (2, 3, 3)), ((4, 4), 1)])
def test_units_kept_whole_in_noise_order(grid, unit):
    N = 3
    t, h, w = (1, *grid) if len(grid) == 2 else grid
    ut, uh, uw = (1, unit, unit) if isinstance(unit, int) else ((1, *unit) if len(unit) == 2 else unit)
    gt, gh, gw = t // ut, h // uh, w // uw
    noise = torch.rand(N, gt * gh * gw)
    ids_keep, ids_restore, mask = mask_unit_indices(N, grid, unit, 0.75, noise=noise)
    unit_keep, _, _ = mae_kernels.random_mask_indices(N, gt * gh * gw, 0.75, noise=noise)
    for n in range(N):
        want = []
        for u in unit_keep[n].tolist():
            ct, ch, cw = u // (gh * gw), u // gw % gh, u % gw
            want += sorted(((ct * ut + a) * h + ch * uh + i) * w + cw * uw + j
                           for a in range(ut) for i in range(uh) for j in range(uw))
        assert ids_keep[n].tolist() == want
    L = t * h * w
    shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(shuffle[:, :ids_keep.shape[1]], ids_keep)
    assert torch.equal(torch.sort(shuffle, dim=1).values, torch.arange(L).expand(N, L))
    removed = torch.ones(N, L).scatter(1, ids_keep, 0.0)
    assert torch.equal(mask, removed)


def test_feeds_the_encoder_path_and_checks_the_grid():
    imgs = torch.randn(2, 3, 32, 32)
    ids_keep, ids_restore, mask = mask_unit_indices(2, (8, 8), (4, 4), 0.75, generator=torch.Generator().manual_seed(0))
    assert ids_keep.shape == (2, 16)
    tokens = mae_kernels.masked_patch_embed(imgs, ids_keep, torch.randn(8, 3, 4, 4), torch.randn(8))
    assert tokens.shape == (2, 16, 8)
    with pytest.raises(ValueError, match=r"unit 1x3x3 must divide the token grid 1x8x8"):
        mask_unit_indices(2, (8, 8), 3, 0.5)

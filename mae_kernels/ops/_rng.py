"""Random numbers for kernels that draw their own: a (seed, offset) pair taken from torch's generator and
the generator advanced past it, so that torch.manual_seed reproduces the kernels' numbers and successive
calls draw fresh ones (the same contract as torch's dropout kernels)."""
import torch

_INT63 = (1 << 63) - 1


def seed_offset(device, generator, increment):
    """(seed, offset) for a kernel on `device` whose threads (Philox subsequences) each use at most `increment`
    numbers from the offset on: torch's convention (curand_init(seed, subsequence, offset)), so the numbers of
    later torch kernels, which start at the advanced offset, never coincide with these."""
    if device.type == "cuda":
        gen = generator if generator is not None else torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()]
        offset = gen.get_offset()
        gen.set_offset(offset + ((increment + 3) // 4) * 4)  # Philox counters come in blocks of 4
        return gen.initial_seed() & _INT63, offset
    # CPU generators (mt19937) have no offset: draw a fresh seed from them instead.
    seed = int(torch.randint(0, _INT63, (1,), generator=generator))
    return seed, 0

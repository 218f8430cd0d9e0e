"""What both world trainers share: deterministic settings, the learning-rate schedule, one optimiser step."""

from __future__ import annotations

from contextlib import contextmanager

import torch

GRAD_CLIP = 1.0


def warmup_constant_decay(opt: torch.optim.Optimizer, steps: int, *,
                          decay_fraction: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over 5% of the steps, the full rate until the last `decay_fraction`, then linearly to 0: the
    rate stays up while the loss still falls (a cosine took it to 0 while the world's panoptic loss was falling)."""
    warmup, decay = max(1, steps // 20), max(1, round(steps * decay_fraction))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup, (steps - step) / decay)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@contextmanager
def deterministic(threads: int):
    """Deterministic algorithms on a fixed thread count while training; the caller's torch settings come back after."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
    opt.step()

"""The training loop the neural models share (torch is imported only here and in them).

Mini-batch Adam on mean squared error or the pinball loss, with a seeded
validation split for early stopping: the best epoch's weights are kept. Seeding
goes through ``seeded_torch`` (``torch.random.fork_rng``) and a private generator,
so training is reproducible and leaves torch's global RNG as it found it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from tqdm.auto import tqdm


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: these nets are tiny, and on a shared machine more
    threads make each step slower (docs/predictors.md, "Design notes")."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch for weight init and training (restoring its global RNG afterwards),
    on one thread."""
    import torch

    with torch.random.fork_rng(devices=[]), one_thread():
        torch.manual_seed(seed)
        yield


def pinball(pred, y, q: float):
    """Mean pinball (quantile) loss: minimised by the q-quantile of y given x."""
    diff = y - pred
    return (diff.clamp(min=0) * q + (-diff).clamp(min=0) * (1.0 - q)).mean()


def train_regressor(
    module: Any,
    inputs: list[np.ndarray],
    y: np.ndarray,
    *,
    quantile: float | None,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    val_fraction: float,
    seed: int,
    desc: str,
) -> dict[str, Any]:
    """Fit ``module(*inputs) -> y`` in place; returns a short training summary."""
    import torch

    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = int(round(n * val_fraction)) if n >= 20 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    tensors = [torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in inputs]
    target = torch.as_tensor(y, dtype=torch.float32)

    def loss_fn(pred, yy):
        if quantile is None:
            return torch.mean((pred - yy) ** 2)
        return pinball(pred, yy, quantile)

    def evaluate(idx: np.ndarray) -> float:
        module.eval()
        with torch.no_grad():
            t = torch.as_tensor(idx)
            return float(loss_fn(module(*[a[t] for a in tensors]), target[t]))

    best = (float("inf"), None, 0)
    stale = 0
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=None)
    epoch = 0
    for epoch in bar:
        module.train()
        perm = torch.as_tensor(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(perm), batch_size):
            b = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(module(*[a[b] for a in tensors]), target[b])
            loss.backward()
            opt.step()
        score = evaluate(val_idx if n_val else train_idx)
        bar.set_postfix(loss=f"{score:.4g}")
        if score < best[0] - 1e-9:
            best = (score, {k: v.detach().clone() for k, v in module.state_dict().items()}, epoch)
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best[1] is not None:
        module.load_state_dict(best[1])
    module.eval()
    return {"best_epoch": best[2] + 1, "epochs_run": epoch + 1, "val_loss_std_units": best[0]}

"""A small transformer over the prompt's KV blocks plus the load features (the teacher).

What the sequence is, honestly: neither profiling data nor simulator records keep
prompt text, and a block hash carries no meaning a model could learn from. What
does shape a request's latency is *which* of its blocks must be computed. So the
teacher reads the prompt as the sequence of its 16-token KV blocks, grouped into
at most ``max_segments`` contiguous segments (long prompts get several blocks per
segment), each described by four numbers: how full the segment is, what fraction
of it the router expects to be cached (the estimated prefix hit covers the first
blocks), where it starts in the prompt, and the segment size. A "load token"
carrying every encoded feature (load, scrape, group) is prepended, the encoder
attends over the lot, and the prediction is read from the load token.

Everything in that sequence is derived from ``input_len`` and
``prefix_hit_tokens``: the teacher knows nothing a tree could not be told. Its job
is to be a smooth, flexible function to distil (``predictors.distill``); data with
real token ids would enter through ``prompt_segments``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from predictors.base import Predictor, column_scaling
from predictors.features import NUMERIC_FEATURES
from predictors.torchfit import one_thread, seeded_torch, train_regressor

BLOCK_SIZE = 16
SEGMENT_FEATURES = 4
_INPUT_LEN = NUMERIC_FEATURES.index("input_len")
_PREFIX_HIT = NUMERIC_FEATURES.index("prefix_hit_tokens")


def prompt_segments(
    input_len: np.ndarray, prefix_hit: np.ndarray, max_segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row segment features ``(n, S, 4)`` and the padding mask ``(n, S)``."""
    L = np.maximum(np.asarray(input_len, dtype=np.float64), 1.0)
    H = np.clip(np.asarray(prefix_hit, dtype=np.float64), 0.0, L)
    blocks = np.ceil(L / BLOCK_SIZE)
    seg_tokens = np.maximum(1.0, np.ceil(blocks / max_segments)) * BLOCK_SIZE
    starts = np.arange(max_segments, dtype=np.float64)[None, :] * seg_tokens[:, None]
    ends = np.minimum(starts + seg_tokens[:, None], L[:, None])
    tokens = np.clip(ends - starts, 0.0, None)
    cached = np.clip(np.minimum(H[:, None], ends) - starts, 0.0, tokens)
    feats = np.stack(
        [
            tokens / seg_tokens[:, None],
            cached / np.maximum(tokens, 1.0),
            starts / L[:, None],
            np.broadcast_to((np.log2(seg_tokens) / 16.0)[:, None], tokens.shape),
        ],
        axis=-1,
    )
    return feats, tokens <= 0


def build_teacher(n_load: int, *, d_model: int, heads: int, layers: int, ff: int, max_segments: int):
    import torch

    class _Teacher(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seg_in = torch.nn.Linear(SEGMENT_FEATURES, d_model)
            self.load_in = torch.nn.Linear(n_load, d_model)
            self.pos = torch.nn.Parameter(torch.zeros(max_segments + 1, d_model))
            layer = torch.nn.TransformerEncoderLayer(
                d_model, heads, ff, dropout=0.0, batch_first=True
            )
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(d_model, d_model), torch.nn.ReLU(), torch.nn.Linear(d_model, 1)
            )

        def forward(self, load, segs, pad):
            tokens = torch.cat([self.load_in(load)[:, None, :], self.seg_in(segs)], dim=1) + self.pos
            mask = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1) > 0.5
            h = self.encoder(tokens, src_key_padding_mask=mask)
            return self.head(h[:, 0])[:, 0]

    return _Teacher()


class TransformerPredictor(Predictor):
    """The teacher model; usable on its own (``--model transformer``) but slow to route with."""

    kind = "transformer"
    file_suffix = ".safetensors"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 2,
        ff: int = 64,
        max_segments: int = 16,
        epochs: int = 40,
        batch_size: int = 256,
        lr: float = 2e-3,
        patience: int = 8,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        self.d_model, self.heads, self.layers, self.ff = int(d_model), int(heads), int(layers), int(ff)
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of heads ({heads})")
        self.max_segments = int(max_segments)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.patience, self.val_fraction = int(patience), float(val_fraction)
        self.tensors: dict[str, np.ndarray] = {}
        self.training: dict[str, Any] = {}
        self._net = None

    def _inputs(self, Z: np.ndarray) -> list[np.ndarray]:
        segs, pad = prompt_segments(Z[:, _INPUT_LEN], Z[:, _PREFIX_HIT], self.max_segments)
        load = (Z - self.tensors["input_mean"]) / self.tensors["input_scale"]
        return [load, segs, pad.astype(np.float32)]

    def _build(self, n_load: int):
        return build_teacher(
            n_load, d_model=self.d_model, heads=self.heads, layers=self.layers, ff=self.ff,
            max_segments=self.max_segments,
        )

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        x_mean, x_scale = column_scaling(Z)
        y_mean, y_scale = float(y.mean()), float(y.std()) or 1.0
        self.tensors = {
            "input_mean": x_mean, "input_scale": x_scale,
            "target_affine": np.array([y_mean, y_scale], dtype=np.float64),
        }
        with seeded_torch(self.seed):
            net = self._build(Z.shape[1])
            self.training = train_regressor(
                net, self._inputs(Z), (y - y_mean) / y_scale,
                quantile=self.quantile, epochs=self.epochs, batch_size=self.batch_size,
                lr=self.lr, weight_decay=0.0, patience=self.patience,
                val_fraction=self.val_fraction, seed=self.seed, desc="transformer",
            )
        self.tensors.update({k: v.detach().numpy().copy() for k, v in net.state_dict().items()})
        self._net = net

    def predict_encoded(self, Z: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        import torch

        if self._net is None:
            raise RuntimeError("transformer model has no weights; fit or load it first")
        out = np.empty(len(Z), dtype=np.float64)
        y_mean, y_scale = (float(v) for v in self.tensors["target_affine"])
        with torch.no_grad(), one_thread():
            for s in range(0, len(Z), batch_size):
                parts = [torch.as_tensor(a, dtype=torch.float32) for a in self._inputs(Z[s : s + batch_size])]
                out[s : s + batch_size] = self._net(*parts).numpy()
        return out * y_scale + y_mean

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"training": self.training, "features": self._fitted_encoder().names}, dict(self.tensors)

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        import torch

        missing = [k for k in ("input_mean", "input_scale", "target_affine") if k not in tensors]
        if missing:
            raise ValueError(f"transformer file lacks tensor(s) {', '.join(missing)}")
        self.training = dict(state.get("training", {}))
        self.tensors = dict(tensors)
        net = self._build(len(tensors["input_mean"]))
        expected = list(net.state_dict())
        lacking = [k for k in expected if k not in tensors]
        if lacking:
            raise ValueError(f"transformer file lacks weight(s) {', '.join(lacking[:5])}")
        net.load_state_dict({k: torch.from_numpy(np.array(tensors[k])) for k in expected})
        net.eval()
        self._net = net

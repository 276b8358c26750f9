"""A small multilayer perceptron: trained with torch, evaluated with numpy.

Inputs and target are standardised for training (the pinball loss is unchanged
in meaning by that affine map, so quantile nets work the same way). The file
holds the weights in safetensors; prediction folds the input scaling into the
first layer and runs a few numpy matrix products, which for 16 rows costs a few
microseconds and needs no torch at routing time.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from predictors.base import Predictor, column_scaling
from predictors.torchfit import seeded_torch, train_regressor


def build_mlp(n_in: int, hidden: list[int]):
    """The torch module (Linear/ReLU stack ending in one output)."""
    import torch

    layers: list[Any] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 1))

    class _MLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.Sequential(*layers)

        def forward(self, x):
            return self.layers(x)[:, 0]

    return _MLP()


class MLPPredictor(Predictor):
    """ReLU network of ``hidden`` widths; MSE for the mean, pinball for quantiles."""

    kind = "mlp"
    file_suffix = ".safetensors"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        hidden: list[int] | tuple[int, ...] = (64, 64),
        epochs: int = 200,
        batch_size: int = 256,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        patience: int = 20,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        self.hidden = [int(h) for h in hidden]
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer widths, got {hidden!r}")
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.patience = int(patience)
        self.val_fraction = float(val_fraction)
        self.tensors: dict[str, np.ndarray] = {}
        self.training: dict[str, Any] = {}

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        x_mean, x_scale = column_scaling(Z)
        y_mean, y_scale = float(y.mean()), float(y.std()) or 1.0
        with seeded_torch(self.seed):
            net = build_mlp(Z.shape[1], self.hidden)
            self.training = train_regressor(
                net, [(Z - x_mean) / x_scale], (y - y_mean) / y_scale,
                quantile=self.quantile, epochs=self.epochs, batch_size=self.batch_size,
                lr=self.lr, weight_decay=self.weight_decay, patience=self.patience,
                val_fraction=self.val_fraction, seed=self.seed, desc="mlp",
            )
        tensors = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
        tensors["input_mean"] = x_mean.astype(np.float64)
        tensors["input_scale"] = x_scale.astype(np.float64)
        tensors["target_affine"] = np.array([y_mean, y_scale], dtype=np.float64)
        self._set_tensors(tensors)

    def _set_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        missing = [k for k in ("input_mean", "input_scale", "target_affine") if k not in tensors]
        if missing:
            raise ValueError(f"mlp file lacks tensor(s) {', '.join(missing)}")
        n_layers = len(self.hidden) + 1
        weights = []
        for i in range(n_layers):
            key = f"layers.{2 * i}"
            if f"{key}.weight" not in tensors or f"{key}.bias" not in tensors:
                raise ValueError(f"mlp file lacks tensor {key}.weight/.bias for its hidden={self.hidden}")
            weights.append(
                (tensors[f"{key}.weight"].astype(np.float64).T, tensors[f"{key}.bias"].astype(np.float64))
            )
        mean, scale = tensors["input_mean"], tensors["input_scale"]
        if weights[0][0].shape[0] != len(mean):
            raise ValueError(
                f"mlp first layer takes {weights[0][0].shape[0]} inputs, its encoder gives {len(mean)}"
            )
        # Fold (Z - mean) / scale into the first layer: one product less per call.
        w0, b0 = weights[0]
        w0 = w0 / scale[:, None]
        weights[0] = (w0, b0 - mean @ w0)
        self._weights = weights
        self._y_mean, self._y_scale = (float(v) for v in tensors["target_affine"])
        self.tensors = tensors

    def predict_encoded(self, Z: np.ndarray) -> np.ndarray:
        w0, b0 = self._weights[0]
        return self._forward(Z @ w0 + b0)

    def predict_split(self, raw: np.ndarray, tail: np.ndarray) -> np.ndarray:
        w0, b0 = self._weights[0]
        k = raw.shape[1]
        return self._forward(raw @ w0[:k] + tail @ w0[k:] + b0)

    def _forward(self, h: np.ndarray) -> np.ndarray:
        """The rest of the net, from the first layer's pre-activation."""
        for w, b in self._weights[1:]:
            np.maximum(h, 0.0, out=h)
            h = h @ w + b
        return h[:, 0] * self._y_scale + self._y_mean

    def torch_predict(self, Z: np.ndarray) -> np.ndarray:
        """Reference prediction through torch itself (tests compare the numpy path to it)."""
        import torch

        net = build_mlp(Z.shape[1], self.hidden)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.tensors.items() if k.startswith("layers.")})
        net.eval()
        x = (Z - self.tensors["input_mean"]) / self.tensors["input_scale"]
        with torch.no_grad():
            out = net(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)
        return out * self._y_scale + self._y_mean

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"training": self.training, "features": self._fitted_encoder().names}, dict(self.tensors)

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.training = dict(state.get("training", {}))
        self._set_tensors(tensors)

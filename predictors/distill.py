"""Distillation: a transformer teacher, a decision-tree student that routes fast.

The teacher (``predictors.transformer``) is trained on the data. The student is
a CART tree over the cheap encoded features, fitted to the teacher's predictions
on the training rows plus ``augment`` times as many synthetic rows. The synthetic
rows recombine real ones feature by feature (each feature, with its missing flag,
taken from one of two random training rows; prompt length and prefix hit travel
together), so the student sees the teacher's function in load combinations the
data visits rarely, and is labelled by the teacher rather than by noisy targets.

The file is the student tree (JSON, routing-fast) plus a summary of the teacher;
``predictors compare`` reports teacher, student and a tree trained directly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from predictors.features import NULLABLE_FEATURES, NUMERIC_FEATURES
from predictors.transformer import TransformerPredictor
from predictors.tree import CompactTree, TreeModel, fit_tree, load_tree_state


def feature_blocks(names: list[str]) -> list[list[int]]:
    """Encoded columns that must be recombined together (a feature and its flag...)."""
    pos = {n: i for i, n in enumerate(names)}
    blocks = [[pos["input_len"], pos["prefix_hit_tokens"]]]
    for name in NUMERIC_FEATURES[2:]:
        block = [pos[name]]
        if name in NULLABLE_FEATURES:
            block.append(pos[f"{name}_missing"])
        blocks.append(block)
    groups = [i for n, i in pos.items() if n.startswith("group=")]
    if groups:
        blocks.append(groups)
    return blocks


def recombine(Z: np.ndarray, blocks: list[list[int]], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rows, each block of columns copied from one of two random rows of ``Z``."""
    a = Z[rng.integers(0, len(Z), n)]
    b = Z[rng.integers(0, len(Z), n)]
    take_b = rng.random((n, len(blocks))) < 0.5
    for j, cols in enumerate(blocks):
        a[np.ix_(take_b[:, j], cols)] = b[np.ix_(take_b[:, j], cols)]
    return a


class DistilledTreePredictor(TreeModel):
    """A CART student distilled from a transformer teacher (``teacher`` after ``fit``)."""

    kind = "distill"

    def __init__(
        self,
        *,
        target: str = "ttft",
        quantile: float | None = None,
        seed: int = 0,
        max_depth: int = 8,
        min_samples_leaf: int = 10,
        augment: float = 2.0,
        teacher_epochs: int = 40,
        teacher_d_model: int = 32,
        teacher_layers: int = 2,
    ) -> None:
        super().__init__(target=target, quantile=quantile, seed=seed)
        self.max_depth = int(max_depth)
        self.min_samples_leaf = int(min_samples_leaf)
        self.augment = float(augment)
        if self.augment < 0:
            raise ValueError(f"augment must be >= 0, got {augment!r}")
        self.teacher_epochs = int(teacher_epochs)
        self.teacher_d_model = int(teacher_d_model)
        self.teacher_layers = int(teacher_layers)
        self.tree: CompactTree | None = None
        self.teacher: TransformerPredictor | None = None
        self.distillation: dict[str, Any] = {}

    def _fit_encoded(self, Z: np.ndarray, y: np.ndarray) -> None:
        teacher = TransformerPredictor(
            target=self.target, quantile=self.quantile, seed=self.seed,
            epochs=self.teacher_epochs, d_model=self.teacher_d_model, layers=self.teacher_layers,
        )
        teacher.encoder = self.encoder
        teacher._fit_encoded(Z, y)
        rng = np.random.default_rng(self.seed)
        extra = recombine(Z, feature_blocks(self.encoder.names), int(round(self.augment * len(Z))), rng)
        Zs = np.vstack([Z, extra])
        labels = teacher.predict_encoded(Zs)
        self.tree, _ = fit_tree(
            Zs, labels, max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf, seed=self.seed
        )
        on_data = teacher.predict_encoded(Z)
        self.teacher = teacher
        self.distillation = {
            "teacher_kind": teacher.kind,
            "teacher_params": teacher.get_params(),
            "teacher_training": teacher.training,
            "rows_real": len(Z),
            "rows_synthetic": len(extra),
            "teacher_train_mae": float(np.mean(np.abs(on_data - y))),
            "student_vs_teacher_mae": float(np.mean(np.abs(self.tree.predict(Zs) - labels))),
        }

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {
            "tree": self.tree.to_dict(),
            "features": self._fitted_encoder().names,
            "distillation": self.distillation,
        }, {}

    def _load_state(self, state: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.tree = load_tree_state(state, self._fitted_encoder().names)
        self.distillation = dict(state.get("distillation", {}))

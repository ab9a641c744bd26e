"""A convex head fitted in one go: multinomial logistic regression on a frozen encoder's cached
embeddings (train.py ``--head_solver lbfgs``).

The objective is scikit-learn's: ``C * sum_i w_i * CE_i + |W|^2 / 2`` (the bias is not penalised),
with the clip weights ``w`` scaled to sum to the number of clips, so ``C`` means what it means for
``LogisticRegression(C=...)``. It is minimised full-batch with L-BFGS (strong Wolfe line search), from
zero weights: the answer does not depend on a seed, a learning rate or a number of epochs.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from ser.training.trainer import masked_logits

logger = logging.getLogger(__name__)

#: L-BFGS settings: enough iterations for the 4096-wide head to converge on a few thousand clips.
MAX_ITERATIONS = 300
TOLERANCE_GRAD = 1e-5
TOLERANCE_CHANGE = 1e-9
HISTORY_SIZE = 20


def fit_logistic_regression(
    features: np.ndarray,
    label_ids: np.ndarray,
    num_labels: int,
    C: float,
    loss_weights: np.ndarray | None = None,
    allowed_classes: np.ndarray | None = None,
    max_iterations: int = MAX_ITERATIONS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (labels, features), bias (labels,))`` minimising ``C * sum_i w_i CE_i + |W|^2 / 2``
    over ``features (clips, features)``; ``allowed_classes (clips, labels)`` masks the classes a clip's
    corpus lacks out of its cross-entropy."""
    if C <= 0:
        raise ValueError(f"C must be > 0, got {C}")
    count = len(label_ids)
    inputs = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    targets = torch.from_numpy(np.asarray(label_ids, dtype=np.int64))
    weights = np.ones(count) if loss_weights is None else np.asarray(loss_weights, dtype=np.float64)
    weights = torch.from_numpy(weights / weights.sum() * count).float()
    allowed = None if allowed_classes is None else torch.from_numpy(np.asarray(allowed_classes, dtype=bool))
    weight = torch.zeros(inputs.shape[1], num_labels, requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=max_iterations,
        tolerance_grad=TOLERANCE_GRAD,
        tolerance_change=TOLERANCE_CHANGE,
        history_size=HISTORY_SIZE,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = masked_logits(inputs @ weight + bias, allowed)
        cross_entropy = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        # Divided by the clip count: the same minimum, a better-scaled line search.
        loss = (C * (cross_entropy * weights).sum() + 0.5 * weight.square().sum()) / count
        loss.backward()
        return loss

    started = time.perf_counter()
    loss = optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    logger.info(
        "L-BFGS logistic regression (C=%g) on %d clips x %d features: objective %.4f after %d iterations, %.1f s",
        C, count, inputs.shape[1], float(loss), int(state.get("n_iter", 0)), time.perf_counter() - started,
    )  # fmt: skip
    return weight.detach().T.contiguous().numpy(), bias.detach().numpy()


def standardised_features(model, dataset) -> np.ndarray:
    """The head's input for every clip of an ``EmbeddingDataset``: each clip standardised with its own
    statistics where the dataset has them (per speaker / corpus), else the model's, then pooled."""
    head = model.heads[0]
    with torch.no_grad():
        embeddings = dataset.embeddings
        if dataset.statistics is None:
            mean, var = model.embedding_mean, model.embedding_var
        else:
            mean = torch.stack([torch.from_numpy(statistics.mean).float() for statistics in dataset.statistics])
            var = torch.stack([torch.from_numpy(statistics.variance).float() for statistics in dataset.statistics])
        standardised = (embeddings - mean) / torch.sqrt(var + 1e-5)
        return head.pool(standardised).numpy()


def fit_linear_head(model, dataset, C: float, adapted: bool = False) -> None:
    """Fit a WhisperSer's single linear head (``head_hidden_size=0``, ``ensemble_size=1``) on an
    ``EmbeddingDataset`` with its per-clip loss weights and allowed classes, in place; ``adapted``: its
    adapted head (``config.adapted_head``), for a dataset standardised with each speaker's statistics."""
    if len(model.heads) != 1 or not isinstance(model.heads[0].classifier, torch.nn.Linear):
        raise ValueError("--head_solver lbfgs fits one linear head: set head_hidden_size=0 and ensemble_size=1 in --config_overrides.")
    if model.config.layer_pooling != "concat":
        raise ValueError("--head_solver lbfgs needs layer_pooling=concat (a weighted sum of layers is not convex in its weights).")
    extras = dataset.extras
    weight, bias = fit_logistic_regression(
        standardised_features(model, dataset),
        np.asarray(dataset.label_ids),
        model.config.num_labels,
        C,
        loss_weights=extras["loss_weight"].numpy() if "loss_weight" in extras else None,
        allowed_classes=extras["allowed_classes"].numpy() if "allowed_classes" in extras else None,
    )
    classifier = model.heads_for(adapted)[0].classifier
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(weight))
        classifier.bias.copy_(torch.from_numpy(bias))

"""What ONNX Runtime's compiled optimizers can honour, and which training settings they compile.

An ONNX Runtime artifact carries its optimizer as a graph (``optimizer_model.onnx``), so two
questions about a tier come up long before, and far away from, any export: can this tier be
compiled for ONNX Runtime at all (the coordinator asks when it places a device), and which
settings does the compiled optimizer fix (they are part of the artifact's content key). Both
are answered here without torch or ONNX, for the format plug-in
(:mod:`export.formats.onnxruntime`) and the compiler (:mod:`export.onnxruntime`) alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # models.tier imports torch; these rules only read the settings' fields
    from models.tier import TrainingHyperparameters


def check_training_hyperparameters(train: TrainingHyperparameters) -> None:
    """Refuse optimizer settings the runtime's compiled optimizers cannot honour.

    ONNX Runtime's SGD (``SGDOptimizerV2``) has neither momentum nor weight decay: silently
    dropping them would train differently from what the job says.
    """
    train.validate()
    if train.optimizer == "sgd" and (train.momentum or train.weight_decay):
        raise ValueError("the onnxruntime SGD optimizer has no momentum or weight decay; use momentum=0 and "
                         "weight_decay=0, or the adamw optimizer")


def compiled_optimizer(train: TrainingHyperparameters) -> dict:
    """The part of the training settings compiled into ``optimizer_model.onnx`` (the learning rate is not)."""
    if train.optimizer == "adamw":
        return {"optimizer": "adamw", "betas": [float(b) for b in train.betas], "eps": float(train.eps),
                "weight_decay": float(train.weight_decay)}
    return {"optimizer": "sgd"}

"""Training recipe, trainer, knowledge distillation and checkpoints."""
from mpcvit.train.checkpoint import (check_same_shape, checkpoint_config, load_checkpoint, load_weights,
                                     model_from_checkpoint, save_checkpoint)
from mpcvit.train.kd import distillation_loss, soft_cross_entropy, token_mse
from mpcvit.train.trainer import FitResult, dataset_info, evaluate, fit

__all__ = ["fit", "evaluate", "FitResult", "dataset_info", "distillation_loss", "soft_cross_entropy", "token_mse",
           "save_checkpoint", "load_checkpoint", "load_weights", "model_from_checkpoint", "checkpoint_config",
           "check_same_shape"]

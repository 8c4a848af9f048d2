"""ViT-Lite models with per-head attention kinds; importing this registers ``mpcvit_*`` with timm."""
from mpcvit.models.attention import HeteroAttention, apply_kind, relu_softmax, scaling
from mpcvit.models.mlp import KindMlp
from mpcvit.models.registry import MODEL_CONFIGS, create, model_config
from mpcvit.models.vit import Block, MPCViT

__all__ = ["HeteroAttention", "KindMlp", "Block", "MPCViT", "MODEL_CONFIGS", "model_config", "create",
           "apply_kind", "relu_softmax", "scaling"]

"""MPCViT in PyTorch: ViTs with per-head heterogeneous attention, MPC-aware search, KD retraining, export.

Importing the package registers the ``mpcvit_*`` models with timm, so ``import mpcvit`` is enough for
``timm.create_model("mpcvit_vit_7_4_32")``.
"""
__version__ = "0.1.0"

from mpcvit import models  # noqa: E402,F401  (registers the models with timm)

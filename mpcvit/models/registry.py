"""Named ViT-Lite configurations, registered with timm as ``mpcvit_<name>``."""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from compiler.errors import UserError
from mpcvit.catalog import MODEL_CONFIGS
from mpcvit.config import ModelConfig, from_dict
from mpcvit.models.vit import MPCViT



def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The named configuration with ``overrides`` (strictly checked keys)."""
    if name not in MODEL_CONFIGS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    return from_dict(ModelConfig, {"name": name, **MODEL_CONFIGS[name], **overrides}, f"model {name}")


def create(cfg: ModelConfig) -> MPCViT:
    return MPCViT(cfg)


def _register(name: str) -> None:
    def factory(pretrained: bool = False, **kwargs: Any) -> MPCViT:
        if pretrained:
            raise UserError(f"mpcvit_{name}: no pretrained weights are shipped; train one with `mpcvit train`")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
        return MPCViT(model_config(name, **kwargs))

    factory.__name__ = factory.__qualname__ = f"mpcvit_{name}"
    factory.__module__ = __name__
    register_model(factory)


for _name in MODEL_CONFIGS:
    _register(_name)

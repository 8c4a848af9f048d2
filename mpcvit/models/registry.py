"""Named ViT-Lite configurations, registered with timm as ``mpcvit_<name>``."""
from __future__ import annotations

from typing import Any

from timm.models import register_model

from compiler.errors import UserError
from mpcvit.config import ModelConfig, from_dict
from mpcvit.models.vit import MPCViT

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # the paper's models
    "vit_7_4_32": dict(img_size=32, in_chans=3, patch_size=4, num_classes=10, depth=7, heads=4, dim=256,
                       mlp_ratio=2.0, drop_path_rate=0.1),
    "vit_9_12_64": dict(img_size=64, in_chans=3, patch_size=4, num_classes=200, depth=9, heads=12, dim=192,
                        mlp_ratio=2.0, drop_path_rate=0.1),
    # small ones for CPU work
    "vit_2_4_32": dict(img_size=32, in_chans=3, patch_size=4, num_classes=10, depth=2, heads=4, dim=64, mlp_ratio=2.0),
    "vit_2_4_8": dict(img_size=8, in_chans=1, patch_size=2, num_classes=10, depth=2, heads=4, dim=64, mlp_ratio=2.0,
                      drop_path_rate=0.1),  # the digits demo
    "vit_1_4_8": dict(img_size=8, in_chans=1, patch_size=2, num_classes=10, depth=1, heads=4, dim=16, mlp_ratio=2.0),
}


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

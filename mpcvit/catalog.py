"""Names known to the command line, kept free of heavy imports (torch, timm, torchvision) so `--help` is quick."""
from __future__ import annotations

from typing import Any

DATASETS = ("digits", "cifar10", "cifar100", "tiny-imagenet")

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

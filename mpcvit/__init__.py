"""MPCViT in PyTorch: ViTs with per-head heterogeneous attention, MPC-aware search, KD retraining, export."""
__version__ = "0.1.0"

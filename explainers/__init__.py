"""Attribution algorithms and metrics (pure PyTorch; never imports Prefect or DVC)."""

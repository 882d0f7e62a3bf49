"""Datasets, model adapters, scorers and body parts. Pure Python/NumPy/PyTorch: never imports Prefect or DVC."""

"""The training core: the loop (loop.py), per-epoch checkpoints (checkpoint.py) and weight averaging (ema.py). It
imports neither mlflow nor dvc, so it runs on a bare CUDA machine with only torch and torchvision."""

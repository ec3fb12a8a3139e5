"""Brain-tumor MRI classification: a ResNet50 transfer-learning pipeline run by DVC and tracked by MLflow."""

__version__ = "0.1.0"

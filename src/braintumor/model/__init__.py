"""The network and what a model file carries: the ResNet50 factory and the model file (network.py), the train and
eval presets (transforms.py), logits to probabilities with TTA and temperature (inference.py, calibration.py), the
unlike-training score (novelty.py), Grad-CAM (explain.py), and the Predictor (predictor.py): a model file to
probabilities, used by evaluation, `braintumor predict`, the page and the served model alike."""

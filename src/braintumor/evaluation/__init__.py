"""Scoring a model on labelled scans and saying what the scores mean: the metrics (metrics.py, scores.py), the HTML
report and its charts (report.py, charts.py) and the model card (model_card.py)."""

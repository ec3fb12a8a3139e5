"""MLflow and provenance: runs, datasets, the registry and model files (runs.py, the only module of the pipeline
that imports mlflow), and the git commit, DVC data hashes and run names they carry (provenance.py)."""

"""DVC stage `evaluate`: see braintumor.pipeline.evaluate."""

from braintumor.cli import run_stage
from braintumor.pipeline import evaluate

if __name__ == "__main__":
    run_stage(evaluate)

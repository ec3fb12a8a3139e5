"""DVC stage `report`: see braintumor.pipeline.report."""

from braintumor.cli import run_stage
from braintumor.pipeline import report

if __name__ == "__main__":
    run_stage(report)

"""DVC stage `validate`: check the scans, find duplicates and leakage, write the split manifest and report."""

from braintumor.cli import run_stage
from braintumor.pipeline import validate

if __name__ == "__main__":
    run_stage(validate)

"""DVC stage `augment_preview`: see braintumor.pipeline.augment_preview."""

from braintumor.cli import run_stage
from braintumor.pipeline import augment_preview

if __name__ == "__main__":
    run_stage(augment_preview)

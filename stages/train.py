"""DVC stage `train`: ResNet50 transfer learning on the manifest's train rows, model selection on val.

Also runs under torchrun for DDP: `torchrun --nproc_per_node 4 stages/train.py`.
"""

from braintumor.cli import run_stage
from braintumor.pipeline import train

if __name__ == "__main__":
    run_stage(train)

"""hw2: deep residual networks (He et al. 2015, 2016) on CIFAR-10."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

"""One run's last weights beside their moving average (--ema_decay), on its validation split and the test set,
with and without flip TTA: what the average adds, measured on the very same run.

    python benchmarks/average_check.py runs/fast_ema/model-16.ckpt [DATA_DIR]
"""
import sys

import torch

from hw2.checkpoint import Checkpoint
from hw2.data import load_data, train_valid_split
from hw2.evaluate import evaluate
from hw2.models import build_network
from hw2.runtime import processor

checkpoint = Checkpoint.load(sys.argv[1])
c = checkpoint.config
x, y, x_test, y_test = load_data(sys.argv[2] if len(sys.argv) > 2 else "data")
_, _, x_valid, y_valid = train_valid_split(x, y, c["valid_size"], c["seed"])
print(processor(torch.device("cpu")), "CIFAR-10 (JPEG stand-in)")
for name, state in (("last weights", checkpoint.model), ("moving average", checkpoint.average)):
    model = build_network(c)
    model.load_state_dict(state)
    for split, (xs, ys) in (("valid", (x_valid, y_valid)), ("test", (x_test, y_test))):
        for tta in (False, True):
            r = evaluate(model, xs, ys, (checkpoint.mean, checkpoint.std), device="cpu", dtype="float32", tta=tta)
            print(f"{name:15} {split:5} tta={tta!s:5} accuracy {r['accuracy']:.4f} loss {r['loss']:.4f}")

"""docs/timing.md's table, "How long will it take?": for each benchmark file (python -m hw2.bench's JSON, one
network on one processor) the training and evaluation throughput it measured, the seconds of one epoch at
32x32 and the minutes of each recipe, estimated from them; below it, the seconds of the epochs at 32x32 of the
reports' runs whose results.json names the processor. tests/test_docs.py checks that docs/timing.md holds what this prints.

    python -m hw2.bench --resnet_size 9 --windows 3 > reports/timing/avx2_resnet56.json
    python benchmarks/timing.py

An epoch's estimate is its training images at their size (progressive resizing trains early epochs on fewer
pixels: a 16x16 image is counted as a quarter of a 32x32 one) at the measured training rate, plus its
validation images at the evaluation rate; checkpoints and start-up are left out.
"""
import json
import statistics
import sys
from pathlib import Path

from hw2.config import Config, config_from
from hw2.modeldir import read_config, read_metrics
from hw2.train import get_image_size

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = [ROOT / "reports" / "bench_cpu_resnet20_bf16.json", *sorted((ROOT / "reports" / "timing").glob("*.json"))]
RECIPES = ["smoke", "fast", "fast60", "he"]  # the columns, each with its own network for smoke (ResNet-8)
SMOKE_NETWORK = "ResNet-8"


def processor_label(record):
    """e.g. "AMD EPYC (AVX512-BF16)": the processor and whether it runs bfloat16 natively."""
    return f"{record['processor']} ({'native bfloat16' if record['native_bfloat16'] else 'no native bfloat16'})"


def recipe_seconds(recipe, train_rate, eval_rate):
    """Estimated seconds of training `recipe` at these rates (images per second at 32x32)."""
    config = config_from(recipe)
    train_images = config.train_subset or 50000 - config.valid_size
    return sum(train_images * (get_image_size(epoch, config) / 32) ** 2 / train_rate + config.valid_size / eval_rate
               for epoch in range(config.epochs))


def duration(seconds):
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimate_rows(paths=BENCHMARKS):
    rows = []
    records = {path: json.loads(path.read_text()) for path in paths}
    for path, record in sorted(records.items(), key=lambda item: (processor_label(item[1]), item[1]["dtype"],
                                                                   int(item[1]["model"].split()[0][7:]))):
        train, evaluate = record["img_per_s"]["hw2"]["train"], record["img_per_s"]["hw2"]["eval"]
        network = record["model"].split(" (")[0]
        epoch = 45000 / train + 5000 / evaluate
        cells = [duration(recipe_seconds(r, train, evaluate)) if (r == "smoke") == (network == SMOKE_NETWORK) else ""
                 for r in RECIPES]
        rows.append(f"| {processor_label(record)}, {record['dtype']} | {network} | {train:.0f} | {evaluate:.0f} | "
                    f"{epoch:.0f} | " + " | ".join(cells) + f" | `{path.relative_to(ROOT)}` |")
    header = ["| processor, dtype | network | training img/s | evaluation img/s | s/epoch | smoke | fast | fast60 | "
              "He et al. | benchmark |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join(header + rows)


def measured_rows():
    """The reports whose results.json names the processor: the median seconds of their runs' epochs at 32x32
    (pooled over seeds; a median, since an epoch that shared the processor with other work or was paused is
    slower), to set beside the estimates' s/epoch."""
    rows = ["| report | processor, dtype | network | epochs at 32x32 | s/epoch (median) |",
            "| --- | --- | --- | --- | --- |"]
    for path in sorted((ROOT / "reports").glob("*/results.json")):
        record = json.loads(path.read_text())
        if "processor" not in record:
            continue
        seconds = []
        for run in sorted(path.parent.glob("*_seed*")):
            config = Config.from_dict(read_config(run))
            seconds += [row["seconds"] for row in read_metrics(run / "metrics.csv")
                        if get_image_size(int(row["epoch"]) - 1, config) == 32]
        rows.append(f"| `{path.parent.name}` | {processor_label(record)}, {record['dtype']} | "
                    f"ResNet-{6 * config.resnet_size + 2} | {len(seconds)} | {statistics.median(seconds):.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.stdout.write(estimate_rows() + "\n\n" + measured_rows() + "\n")

#!/usr/bin/env bash
# Execute today's notebooks 03 and 04 on He et al.'s run again into reports/r20_he/: the executed notebooks and
# their HTML, and what they save there (training_curves.png, metrics.csv, config.json, log.txt, test.csv,
# confusion_matrix.png, confusion.csv, misclassified.png). After a change to notebooks/03 or 04, from the
# repository's root (tests/test_notebooks.py fails until this has run):
#
#     bash benchmarks/report_r20_he.sh [RUN]
#
# RUN is the run's folder, ../shared/runs/r20_he by default (model-90/140/182.ckpt, metrics.csv, train.log).
# It is copied afresh to runs/r20_he (ignored by git), its training log as the log.txt that 03 adds
# to; the checkpoint of epoch 182 is tested with flip TTA first, so that 04's copy of test.csv has that row.
# Testing is in bfloat16, as the run was trained: one to two minutes on a 2-core CPU with AVX512-BF16 or AMX.
# Run it on such a CPU: one without emulates bfloat16, slowly, and that changes a few of the predictions.
set -euo pipefail
run=${1:-../shared/runs/r20_he}
rm -rf runs/r20_he && mkdir -p runs && cp -r "$run" runs/r20_he && chmod -R u+w runs/r20_he
cp runs/r20_he/train.log runs/r20_he/log.txt
python -m hw2 test --modeldir runs/r20_he --checkpoint 182 --tta --dtype bfloat16
papermill --no-progress-bar notebooks/03_train.ipynb reports/r20_he/03_train.ipynb -p modeldir runs/r20_he \
    -p resume True
papermill --no-progress-bar notebooks/04_evaluate.ipynb reports/r20_he/04_evaluate.ipynb -p modeldir runs/r20_he \
    -p dtype bfloat16 -y "checkpoints: [90, 140, 182]"
jupyter nbconvert --to html reports/r20_he/03_train.ipynb reports/r20_he/04_evaluate.ipynb

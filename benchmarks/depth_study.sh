#!/bin/bash
# The depth study (reports/depth/): version 1 ResNets of resnet_size N (ResNet-(6N+2)) trained with one recipe and
# one seed each, submitted to a SLURM cluster through slurm/train.sbatch, each job alone and one after the other,
# then each run tested with and without flip TTA. Run it from the repository's root, with SLURM's commands at hand
# (on a machine without a cluster: slurm/local_cluster.py), then write the report from the runs:
#
#   bash benchmarks/depth_study.sh [N ...]          # default: 1 2 3 5 9 (ResNet-8, -14, -20, -32, -56)
#   python benchmarks/depth_report.py               # reports/depth/ from runs/depth/
#
# RECIPE (default fast), CPUS (the cores each job takes; default all of this machine's), RUNS (default
# runs/depth) and FLAGS (more train flags, e.g. "--data_dir /data/cifar") change it. Each run is
# $RUNS/resnet{6N+2}, and its job's output $RUNS/slurm-resnet{6N+2}-{job}.out. The test jobs activate the
# checkout's .venv, as slurm/train.sbatch does: where the cluster needs module loads, edit both.
set -euo pipefail
recipe=${RECIPE:-fast}
cpus=${CPUS:-$(nproc)}
runs=${RUNS:-runs/depth}
read -r -a flags <<< "${FLAGS:-}"
sizes=("$@")
[ $# -gt 0 ] || sizes=(1 2 3 5 9)
mkdir -p "$runs"
after=()  # each job waits for the one before it: one run at a time, so that each run's times are its own
for n in "${sizes[@]}"; do
  name=resnet$((6 * n + 2))
  train=$(sbatch --parsable --job-name="hw2-$name" --cpus-per-task="$cpus" --output="$runs/slurm-$name-%j.out" \
    "${after[@]}" slurm/train.sbatch --recipe "$recipe" --resnet_version 1 --resnet_size "$n" "${flags[@]}" \
    --modeldir "$runs/$name")
  test=$(sbatch --parsable --job-name="hw2-$name-test" --cpus-per-task="$cpus" \
    --output="$runs/slurm-$name-test-%j.out" --dependency=afterok:"$train" \
    --wrap ". .venv/bin/activate && python -m hw2 test --modeldir $runs/$name --tta && \
            python -m hw2 test --modeldir $runs/$name --no-tta")
  echo "$name: training job $train, then its test job $test"
  after=(--dependency=afterany:"$test")
done

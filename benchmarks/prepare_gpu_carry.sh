#!/usr/bin/env bash
# Run here, right before benchmarks/gpu.sh runs on a GPU machine that has no network (and no .git, which
# does not travel): copies the CIFAR-10 stand-in's files from ../shared/data (or $HW2_SHARED_DATA) into
# .shared-data/ (18 MB), writes beside them what the tree is (commit.txt: `git rev-parse HEAD`, then
# `git status --porcelain`; tree.md5: the MD5 of each file that travels, so the summary can tell files
# changed since), and downloads a wheel for that machine (Python 3.12, x86-64 Linux) of each package named
# into .whl/. Both folders are git-ignored; name them in the device call's carry. The GPU image already
# has numpy, pillow, matplotlib, tqdm and pytest (/work/.library/device/KINDS.md), so usually no package
# need be named.
#
#   bash benchmarks/prepare_gpu_carry.sh                    # .shared-data/ only
#   bash benchmarks/prepare_gpu_carry.sh tqdm==4.67.1       # and .whl/tqdm-4.67.1-py3-none-any.whl
#
# --no-deps: a package's own requirements are not fetched; name each that the machine lacks too (unzip -p
# .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist lists them). Keep one version of each in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${HW2_SHARED_DATA:-../shared/data}
mkdir -p .shared-data
for name in cifar10_jpeg.npz make_cifar10.py batches.meta readme.html; do
  cp -f "$shared/$name" .shared-data/
done
{ git rev-parse HEAD && git status --porcelain; } > .shared-data/commit.txt
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
  if [ -f "$file" ]; then md5sum "$file"; fi  # a tracked file deleted here does not travel
done > .shared-data/tree.md5
if (($#)); then
  platforms=()
  for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 \
             manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
  done
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "$@"
fi
du -sh .shared-data .whl 2> /dev/null || true

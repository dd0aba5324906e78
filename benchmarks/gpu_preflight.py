"""Pre-flight of benchmarks/gpu.sh, in seconds, before any long step: installs the carried wheels, says what
the machine has, and imports what every later step imports (the modules each runs, and the tests, by
collecting them), so that a missing package stops the run at once with what to do, not halfway through.

    python3 benchmarks/gpu_preflight.py --device cuda --data_dir data tests/test_cuda.py tests/test_data.py ...
"""
import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

WHEELS, SITE = Path(".whl"), Path("/tmp/site")  # gpu.sh puts SITE on PYTHONPATH
STANDIN = Path(".shared-data/make_cifar10.py")  # writes data/ when it is missing (prepare_gpu_carry.sh)
MODULES = {  # what each step runs, as modules
    "recipe, test, resume (python -m hw2)": "hw2.cli",
    "bench_resnet20, bench_resnet110": "hw2.bench",
    "resume": "benchmarks/resume_check.py",
    "summary": "benchmarks/gpu_summary.py",
}


def load(name):
    """Import a module by name, or a script by path without running its main."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(Path(name).stem, name)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed instead")
    parser.add_argument("tests", nargs="*", help="the test files the run will run")
    args = parser.parse_args()

    wheels = sorted(WHEELS.glob("*.whl"))
    if wheels and args.dry_run:
        print(f"dry run: would install {' '.join(w.name for w in wheels)}")
    elif wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        importlib.invalidate_caches()

    modules = dict(MODULES)
    if not (Path(args.data_dir) / "cifar-10-batches-py" / "test_batch").exists():
        if not STANDIN.exists():
            sys.exit(f"no CIFAR-10 in {args.data_dir} and no {STANDIN}: run bash benchmarks/prepare_gpu_carry.sh where "
                     "../shared/data is, and name .shared-data in the run's carry")
        modules["data"] = str(STANDIN)
    failed = []
    for step, name in modules.items():
        try:
            load(name)
        except Exception as e:  # a missing package, or an API this torch lacks
            failed.append(f"{step}: importing {name} fails: {type(e).__name__}: {e}")
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-o", "addopts=",
                                "-p", "no:cacheprovider", *args.tests], capture_output=True, text=True)
    if collected.returncode != 0:
        failed.append("the tests do not collect:\n" + collected.stdout[-3000:] + collected.stderr[-2000:])
    if failed:
        sys.exit("pre-flight failed:\n- " + "\n- ".join(failed) + "\nA missing package travels as a wheel: on a "
                 "machine with internet run `bash benchmarks/prepare_gpu_carry.sh NAME==VERSION` and name .whl in the "
                 "run's carry.")
    print(f"imports of every step: ok; {collected.stdout.strip().splitlines()[-1]}")

    if shutil.which("nvidia-smi"):
        print(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10).stdout)
    else:
        print("no nvidia-smi on this machine")
    import numpy
    import torch
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"torch {torch.__version__} sees no CUDA GPU (built for CUDA {torch.version.cuda}): this script "
                     "needs the machine's own CUDA build of torch")
        print(f"GPU: {torch.cuda.get_device_name()}, compute capability {torch.cuda.get_device_capability()}")


if __name__ == "__main__":
    main()

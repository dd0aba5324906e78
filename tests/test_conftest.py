"""tests/conftest.py's own behaviour."""
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_pytest_started_with_sigint_ignored_still_stops_on_sigint_with_its_summary(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path)
    started = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(
        "import time\n"
        "def test_done():\n    pass\n"
        f"def test_slow():\n    open({str(started)!r}, 'w').close()\n    time.sleep(30)\n")
    ignore = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a script gets it
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", "test_slow.py"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore)
    deadline = time.monotonic() + 60
    while not started.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 2, output  # pytest's "interrupted"
    assert "KeyboardInterrupt" in output and "1 passed" in output, output

"""A student's session with the notebooks in JupyterLab, driven by headless Chromium on a copy of the repository:
open each notebook, edit its parameters cell, Run All, Run All again in the same kernel, Restart Kernel and
Run All, and check that what ran is what the cell said (03: the same run shown again, no traceback).

Needs Debian's chromium and chromium-driver and the pinned selenium (requirements-test.txt); .ci/run installs
them, elsewhere the tests skip. A screenshot of each step goes to a folder named hw2-jupyterlab-screenshots-*
in the system's temporary folder; a failed step's is FAILED-<step>.png, and the failure report names it.
"""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import FIRST_TRY

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), "/usr/bin/chromedriver"
if not (CHROMIUM and os.path.exists(CHROMEDRIVER)):
    pytest.skip("no Chromium: apt-get install chromium chromium-driver", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="no selenium: pip install -r requirements-test.txt")
from selenium.webdriver.common.by import By  # noqa: E402 (after the skips)
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = pytest.mark.slow  # minutes of a browser driving JupyterLab: CI runs it (-m slow)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hw2-browser-test"
TINY_RUN = {**FIRST_TRY, "modeldir": "runs/lab"}  # 03's suggested first try, in the folder the checks below name
# The open notebook (the only widget of the main area: open() resets the workspace). JupyterLab's shell.currentWidget
# follows the focus, which headless Chromium 150 does not give the page, so it stays null there.
NOTEBOOK = "(jupyterapp.shell.currentWidget ?? [...jupyterapp.shell.widgets('main')].pop())"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory, real_data_dir):
    """JupyterLab on a copy of the repository (hw2/, notebooks/, data/ linked) -> (url, the copy)."""
    home = tmp_path_factory.mktemp("jupyterlab")
    copy = home / "hw2"
    shutil.copytree(ROOT / "hw2", copy / "hw2", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "notebooks", copy / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "reports", copy / "reports")  # 03's worked example, 05's runs
    (copy / "data").symlink_to(real_data_dir.resolve())
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}", "--ServerApp.port_retries=0",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={copy}",
         "--expose-app-in-browser", f"--LabApp.user_settings_dir={home / 'settings'}",
         f"--LabApp.workspaces_dir={home / 'workspaces'}"],
        env=env, stdout=open(home / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=1)
                break
            except OSError:
                assert server.poll() is None, (home / "server.log").read_text()
                time.sleep(0.5)
        yield url, copy
    finally:
        server.terminate()  # shuts the kernels down too
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # a kernel still training can hold the shutdown up; its kernels
            server.kill()                  # then exit by themselves when they see their parent gone
            server.wait()


@pytest.fixture(scope="module")
def student(lab, tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,1000"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    screenshots = Path(tempfile.mkdtemp(prefix="hw2-jupyterlab-screenshots-"))  # outlives pytest's rotation of tmp_path
    print(f"screenshots of each step: {screenshots}")
    yield Student(driver, *lab, screenshots)
    driver.quit()


class Student:
    """What a person does in JupyterLab: open a notebook, edit lines, use the Run and Kernel menus. What ran is
    read back from the notebook's model (the outputs JupyterLab would save)."""

    def __init__(self, driver, url, copy, screenshots):
        self.driver, self.url, self.copy, self.screenshots = driver, url, copy, screenshots

    @contextlib.contextmanager
    def step(self, name):
        try:
            yield
        except BaseException:
            path = self.screenshots / f"FAILED-{name}.png"
            self.driver.save_screenshot(str(path))
            print(f"what the page showed: {path}")  # pytest prints it with the failure
            raise
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))

    def js(self, script):
        return self.driver.execute_script(script)

    def wait(self, what, condition, timeout):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"gave up after {timeout} s waiting for {what}"
            time.sleep(0.25)

    def open(self, name):
        self.driver.get(f"{self.url}/lab/tree/notebooks/{name}?reset&token={TOKEN}")

        def ready():
            # JupyterLab asks which kernel to start when its list of kernels comes late: take the one it offers.
            for button in self.driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog button.jp-mod-accept"):
                button.click()
            return self.kernel_status() == "idle"
        self.wait(f"{name} to open with its kernel", ready, 90)

    def kernel_status(self):
        return self.js(f"return window.jupyterapp && {NOTEBOOK}?.sessionContext?.session?.kernel?.status")

    def prompts(self):
        """The code cells' `[n]:` prompts; `[*]:` marks a cell that is queued or running."""
        return self.js("return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
                       ".map(e => e.textContent)")

    def menu(self, menu, command):
        self.driver.find_element(By.XPATH, f"//li[contains(@class, 'lm-MenuBar-item')][. = '{menu}']").click()
        self.driver.find_element(By.CSS_SELECTOR, f"li.lm-Menu-item[data-command='{command}']").click()

    def run_all(self, timeout=180):
        before = self.prompts()
        self.menu("Run", "runmenu:run-all")
        self.wait_for_run(before, timeout)

    def restart_and_run_all(self, timeout=180):
        before = self.prompts()
        self.menu("Kernel", "runmenu:restart-and-run-all")
        self.driver.find_element(By.CSS_SELECTOR, ".jp-Dialog button.jp-mod-accept").click()  # "Restart"
        self.wait_for_run(before, timeout)
        assert self.prompts()[0] == "[1]:", "the kernel did not restart"

    def wait_for_run(self, before, timeout):
        # Run All queues every cell at once ([*]) and numbers each anew as it runs; a restart comes first, so the
        # kernel alone being idle proves nothing. A run that stops at an error in an early cell can be over
        # between two looks, so it has started once the prompts are no longer those of before.
        self.wait("Run All to start", lambda: self.prompts() != before, 60)
        self.wait("Run All to finish", lambda: "[*]:" not in self.prompts() and self.kernel_status() == "idle", timeout)

    def edit(self, **values):
        """Retype each `name = ...` line of the parameters cell as `name = value`, as a person would."""
        for name, value in values.items():
            line = f"//div[contains(@class, 'cm-line')][starts-with(., '{name} = ')]"
            self.wait(f"the line {name} = ...", lambda: self.driver.find_elements(By.XPATH, line), 30)  # editors draw late
            self.driver.find_element(By.XPATH, line).click()
            keys = webdriver.ActionChains(self.driver).send_keys(Keys.HOME).key_down(Keys.SHIFT).send_keys(Keys.END)
            keys.key_up(Keys.SHIFT).send_keys(f"{name} = {value!r}").perform()
        webdriver.ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()

    def outputs(self):
        """The text each code cell printed or showed (errors as `Name: message`), and the images shown."""
        notebook = self.js(f"return {NOTEBOOK}.context.model.toJSON()")
        texts, images = [], 0
        for cell in notebook["cells"]:
            if cell["cell_type"] != "code":
                continue
            text = ""
            for output in cell["outputs"]:
                if output["output_type"] == "error":
                    text += f"{output['ename']}: {output['evalue']}\n"
                elif output["output_type"] == "stream":
                    text += "".join(output["text"])
                else:
                    text += "".join(output["data"].get("text/plain", ""))
                    images += "image/png" in output.get("data", {})
            texts.append(text)
        return texts, images

    def show(self, text):
        """Scroll the first output holding `text` into view, for the step's screenshot."""
        self.js(f"[...document.querySelectorAll('.jp-OutputArea')].find(e => e.textContent.includes({json.dumps(text)}))"
                "?.scrollIntoView()")


def errors(texts):
    return [text for text in texts if "Error: " in text]


def test_01_data_runs_all_with_an_edit(student):
    with student.step("01-run-all"):
        student.open("01_data_exploration.ipynb")
        student.edit(valid_size=10000)
        student.run_all()
        texts, images = student.outputs()
        assert not errors(texts) and images == 3  # samples, augmentation, its options
        assert "train 40000, validation 10000, test 10000" in "".join(texts)
        student.show("validation 10000")


def test_02_edits_hold_on_a_second_run_all_and_after_a_restart(student):
    with student.step("02-edit-version-2"):
        student.open("02_architecture.ipynb")
        student.edit(resnet_version=2)
        student.run_all()
        first = student.outputs()
        assert not errors(first[0]) and "version 2, depth 29" in "".join(first[0])
        student.show("version 2, depth 29")
    with student.step("02-run-all-again"):
        student.run_all()
        assert student.outputs() == first
    with student.step("02-restart-and-run-all"):
        student.restart_and_run_all()
        assert student.outputs() == first


def test_03_run_all_again_and_after_a_restart_shows_the_same_run_and_other_parameters_are_one_line(student):
    modeldir = student.copy / TINY_RUN["modeldir"]
    with student.step("03-tiny-run"):
        student.open("03_train.ipynb")
        student.edit(**TINY_RUN)
        student.run_all()
        texts, images = student.outputs()
        assert not errors(texts) and images == 4  # the schedule, the worked example, the live figure, both runs
        table = dict(line.split(None, 1) for line in texts[2].splitlines()[2:])
        assert {name: table[name] for name in TINY_RUN} == {
            **{name: str(value) for name, value in TINY_RUN.items()}}  # as the cell gives them: paths too
        [trained] = [text for text in texts if "Epoch 1 Loss" in text]
        assert "Epoch 2" not in trained
        assert sorted(path.name for path in modeldir.glob("*.ckpt")) == ["model-1.ckpt", "model-best.ckpt"]
        student.show("Epoch 1 Loss")
    with student.step("03-run-all-again"):
        student.run_all()
        again = student.outputs()
        assert not errors(again[0]) and again[1] == 4 and "Epoch 1 Loss" not in "".join(again[0])
        assert "../runs/lab holds a run of these same parameters: continuing it" in "".join(again[0])
        assert "has finished all 1 epochs; nothing to train." in "".join(again[0])
        assert [text for text in again[0] if "saved training_curves.png" in text] == [texts[-1]]
        student.show("holds a run of these same parameters")
    with student.step("03-restart-and-run-all"):
        student.restart_and_run_all()
        assert student.outputs() == again
        assert sorted(path.name for path in modeldir.glob("*.ckpt")) == ["model-1.ckpt", "model-best.ckpt"]
    with student.step("03-other-parameters-are-refused-in-one-line"):
        student.edit(epochs=2)
        student.run_all()
        [error] = errors(student.outputs()[0])
        assert error.count("\n") == 1 and "epochs 1 there, 2 here" in error
        assert "resume = True" in error and "new modeldir" in error
        tracebacks = student.js(f"return {NOTEBOOK}.context.model.toJSON().cells"
                                ".flatMap(cell => cell.outputs || []).filter(output => output.output_type == 'error')"
                                ".map(output => output.traceback)")
        assert tracebacks == [[error.strip()]]  # the one line, not a traceback
        student.show("epochs 1 there, 2 here")


def test_04_evaluates_the_bundled_network_before_a_run_then_the_run(student):
    """Runs on the checkpoint test_03 trained."""
    with student.step("04-the-bundled-network"):
        student.open("04_evaluate.ipynb")
        student.run_all()  # modeldir '': model_v1, which the copy does not have
        texts, images = student.outputs()
        assert not errors(texts) and images == 3
        assert ("model_v1 holds no checkpoints: testing the bundled ResNet-20 hw2/pretrained/resnet20_v1.ckpt"
                in "".join(texts))
        student.show("the bundled ResNet-20")
    with student.step("04-evaluate-the-tiny-run"):
        student.edit(modeldir=TINY_RUN["modeldir"])
        student.run_all()
        texts, images = student.outputs()
        assert not errors(texts) and images == 3  # confusion matrix, misclassified images, your picture's classes
        assert "Restored model parameters from ../runs/lab/model-1.ckpt\nTest accuracy: 0." in "".join(texts)
        assert len(re.findall(r"\w+ \d+\.\d%", [text for text in texts if "%, " in text][-1])) == 5  # 5 classes
        student.show("Test accuracy")


def test_05_compares_the_students_run_with_he_et_al(student):
    """Runs on the run test_03 trained."""
    with student.step("05-compare"):
        student.open("05_compare.ipynb")
        student.edit(modeldirs=["runs/lab", "reports/r20_he"])
        student.run_all()
        texts, images = student.outputs()
        assert not errors(texts) and images == 1
        rows = [line.split()[0] for line in texts[2].splitlines()[2:]]
        assert rows == ["lab", "r20_he"] and "ResNet-8 v1" in texts[2] and "87.42% / 89.04% tta" in texts[2]
        student.show("r20_he")

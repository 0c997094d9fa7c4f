"""Screenshots of a study in the MLflow UI, taken with a real headless Chromium (selenium).

    python tools/mlflow_screenshots.py                 # runs the quickstart study in a temp dir
    python tools/mlflow_screenshots.py --dir DIR       # a directory where a study already ran
    python tools/mlflow_screenshots.py --out docs/screenshots

Starts `raysl ui` on 127.0.0.1 (a free port) on the study's store, opens the link it prints
(the trials table), its chart view, the compare view of the trials that completed, and the parent run's
overview and artifacts, checks that the trials table lists every trial by its run name, and writes small
PNGs (1280x800, 256 colours). Exits 1 when a page does not show what it should.

Needs `selenium` (the `test` extra) and Debian's `chromium` + `chromium-driver`
(/usr/bin/chromium, /usr/bin/chromedriver). tests/test_mlflow_ui.py runs the check part.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SIZE = (1280, 800)


def browser_missing() -> str | None:
    """Why the browser check cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def raysl_ui(directory: Path, port: int) -> Iterator[tuple[str, list[str]]]:
    """`raysl ui` in `directory`; yields (base URL, the study links it printed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysl", "ui", "--port", str(port)],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line and proc.poll() is not None:
                raise RuntimeError(f"raysl ui exited {proc.returncode}: {''.join(lines)}")
            lines.append(line)
            if line.startswith("store:"):
                break
        links = [
            m.group(0) for m in re.finditer(r"http://\S+viewStateShareKey=\S+", "".join(lines))
        ]
        yield f"http://127.0.0.1:{port}", links
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # raysl ui stops its server group on Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextmanager
def chromium() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--window-size={SIZE[0]},{SIZE[1]}", "--hide-scrollbars", "--force-device-scale-factor=1",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: object, texts: list[str], timeout: float = 60.0) -> list[str]:
    """Wait until the page's visible text contains every one of `texts`; returns those missing."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    missing = texts
    while time.monotonic() < deadline:
        try:
            body = driver.find_element(By.TAG_NAME, "body").text
        except Exception:
            body = ""
        missing = [t for t in texts if t not in body]
        if not missing:
            time.sleep(1.0)  # let charts and images finish drawing
            return []
        time.sleep(0.5)
    return missing


def click_all(driver: object, selector: str) -> int:
    """Click every element matching the CSS `selector`; returns how many were clicked."""
    from selenium.webdriver.common.by import By

    clicked = 0
    for element in driver.find_elements(By.CSS_SELECTOR, selector):
        try:
            element.click()
            clicked += 1
        except Exception:  # hidden or gone meanwhile
            pass
    return clicked


ASSISTANT_CLOSE = 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
SHARED_BANNER_CLOSE = 'button[data-component-id="mlflow.experiment_page.shared_view.dismiss"]'
UNFOLD_RUN = 'button[data-component-id*="runnamecellrenderer"]'


def save_png(driver: object, path: Path) -> Path:
    """A screenshot, reduced to 256 colours (a few tens of kB)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.png")
    driver.save_screenshot(str(raw))
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )
    raw.unlink()
    return path


def study_runs(directory: Path, experiment: str) -> tuple[str, object, list[object]]:
    """(experiment id, newest parent run, its trial runs) from the study's store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{directory.resolve()}/mlflow.db")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RuntimeError(f"no experiment {experiment!r} in {directory}/mlflow.db")
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("raysl.kind") == "study"]
    parent = max(parents, key=lambda r: r.info.start_time)
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return found.experiment_id, parent, trials


def check_ui(directory: Path, experiment: str, out: Path | None = None) -> list[str]:
    """Open the three views; returns the problems found (empty: all good)."""
    from raysl.tracking.view import compare_url, run_url

    experiment_id, parent, trials = study_runs(directory, experiment)
    names = [t.info.run_name for t in trials]
    problems: list[str] = []
    with raysl_ui(directory, free_port()) as (base, links), chromium() as driver:
        if len(links) != 1:
            problems.append(f"raysl ui printed {len(links)} study links, not 1")
            return problems
        driver.get(links[0])
        wait_for_text(driver, [parent.info.run_name])
        click_all(driver, ASSISTANT_CLOSE)  # MLflow 3.17 opens its chat panel on a first visit
        if not click_all(driver, UNFOLD_RUN):  # the trials are folded under the study's run
            problems.append("the study's run has no unfold button in the runs table")
        missing = wait_for_text(driver, names)
        if missing:
            problems.append(f"the trials table does not list {missing}")
        if "Traces" in driver.current_url or "overview" in driver.current_url:
            problems.append(f"the link opened {driver.current_url}, not the runs table")
        if out:
            save_png(driver, out / "runs_table.png")

        driver.get(links[0].replace("/runs?", "/runs?compareRunsMode=CHART&"))
        wait_for_text(driver, ["Study"])
        click_all(driver, ASSISTANT_CLOSE)
        click_all(driver, UNFOLD_RUN)
        missing = wait_for_text(driver, ["Parallel Coordinates"])
        if missing:
            problems.append(f"the chart view does not show raysl's charts {missing}")
        if out:
            save_png(driver, out / "charts.png")

        completed = [t for t in trials if t.data.tags.get("raysl.status") == "completed"]
        chosen = (completed or trials)[:4]
        driver.get(compare_url(base, experiment_id, [t.info.run_id for t in chosen]))
        missing = wait_for_text(driver, [t.info.run_name for t in chosen])
        if missing:
            problems.append(f"the compare view does not show {missing}")
        if out:
            save_png(driver, out / "compare.png")

        driver.get(run_url(base, experiment_id, parent.info.run_id))
        missing = wait_for_text(driver, ["Datasets", *names[:1]])
        if missing:
            problems.append(f"the parent's overview does not show {missing}")
        if out:
            save_png(driver, out / "parent_overview.png")

        driver.get(run_url(base, experiment_id, parent.info.run_id, "artifacts"))
        missing = wait_for_text(driver, ["best_checkpoint", "best_config.yaml"])
        if missing:
            problems.append(f"the parent's artifacts do not show {missing}")
        else:  # preview the file that retrains the winner
            from selenium.webdriver.common.by import By

            for element in driver.find_elements(By.XPATH, "//*[text()='best_config.yaml']"):
                with contextlib.suppress(Exception):
                    element.click()
            wait_for_text(driver, ["config:"], timeout=20)
        if out:
            save_png(driver, out / "parent_artifacts.png")
    return problems


def run_quickstart(directory: Path) -> None:
    space = REPO / "search_spaces" / "quickstart.yaml"
    command = [sys.executable, "-m", "raysl", "tune", str(space), "-q"]
    command += ["--set", "tune.register=quickstart-encoder"]
    subprocess.run(command, cwd=directory, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="a directory where a study ran (mlflow.db)")
    parser.add_argument("--experiment", default="quickstart")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    if why := browser_missing():
        print(f"cannot take screenshots: {why}", file=sys.stderr)
        return 2
    tmp = None
    directory = args.dir
    if directory is None:
        tmp = Path(tempfile.mkdtemp(prefix="raysl-screens-"))
        directory = tmp
        run_quickstart(directory)
    try:
        problems = check_ui(directory, args.experiment, args.out)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"screenshots in {args.out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

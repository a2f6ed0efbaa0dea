"""`main.py serve`: the page, POST /predict against real test digits redrawn
as a person would (dark ink on light paper, large), its 400s, the reload
when a run saves beside it, and a real browser drawing on the canvas."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from conftest import MAIN, run_trainer
from PIL import Image, ImageDraw, ImageOps
from procs import LineReader

from mnist_hogwild.learn import data


@pytest.fixture(scope="module")
def model(tmp_path_factory, mnist_dir):
    """A checkpoint trained one epoch on the real MNIST with the fast recipe."""
    cwd = tmp_path_factory.mktemp("serve-model")
    proc = run_trainer(
        "--data-dir", mnist_dir, "--recipe", "fast", "--epochs", "1", "--log-interval", "10000",
        cwd=cwd, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return cwd / "model_checkpoint.pth"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(model, tmp_path):
    """`main.py serve` on a copy of the model, once it says it is serving."""
    served = tmp_path / "model_checkpoint.pth"
    shutil.copy(model, served)
    shutil.copy(model.with_suffix(".metrics.jsonl"), tmp_path / "model_checkpoint.metrics.jsonl")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, MAIN, "serve", "--checkpoint", served, "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    proc.out = LineReader(proc.stdout)
    try:
        proc.out.wait_for(lambda line: line.startswith("serving "), 60)
        yield f"http://127.0.0.1:{port}", served, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url, body, kind="image/png"):
    request = urllib.request.Request(url + "/predict", data=body, headers={"Content-Type": kind})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def png(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def redrawn(pixels):
    """An MNIST test digit as a person's drawing: dark on light, 10x larger."""
    image = Image.frombytes("L", (28, 28), bytes(pixels.flatten().tolist()))
    return png(ImageOps.invert(image).resize((280, 280), Image.Resampling.BILINEAR))


def test_the_page_has_a_canvas_and_the_curves_come_from_the_metrics(server):
    url, _, _ = server
    with urllib.request.urlopen(url + "/", timeout=30) as answer:
        page = answer.read().decode()
    assert "<canvas" in page and 'id="pad"' in page
    assert "http://" not in page.replace("http://" + url.split("//")[1], "")  # nothing external
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        rows = json.loads(answer.read())["metrics"]
    assert [r["epoch"] for r in rows] == [1] and rows[0]["accuracy_percent"] > 90


def test_predict_reads_redrawn_test_digits(server, mnist_dir):
    url, _, _ = server
    test = data.load_split(data.prepare(mnist_dir, "mnist")["test"])
    right = 0
    for i in range(5):
        index = 1000 + 123 * i
        code, body = post(url, redrawn(test.images[index]))
        assert code == 200 and len(body["probabilities"]) == 10 and len(body["input"]) == 784
        assert abs(sum(body["probabilities"]) - 1) < 1e-3
        right += body["digit"] == int(test.labels[index])
    assert right >= 4


@pytest.mark.parametrize(
    "body, kind, says",
    [
        (b"hello", "text/plain", "send an image"),
        (b"hello", "image/png", "Not a readable image"),
        (png(Image.new("L", (100, 100), 255)), "image/png", "No digit found"),
        (b"\x89PNG" + bytes(5 * 2**20), "image/png", "over 4 MB"),
    ],
    ids=["not-an-image-type", "not-an-image", "no-ink", "too-large"],
)
def test_bad_bodies_get_400_with_one_sentence(server, body, kind, says):
    url, _, _ = server
    code, answer = post(url, body, kind)
    assert code == 400 and list(answer) == ["error"]
    assert says in answer["error"] and "\n" not in answer["error"]


def test_a_run_training_beside_it_is_served_at_its_next_save(server, mnist_dir):
    url, served, _ = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    assert post(url, png(stroke))[1]["epoch"] == 1
    proc = run_trainer(
        "--data-dir", mnist_dir, "--resume", "--more-epochs", "1", "--log-interval", "10000",
        "--checkpoint", served, cwd=served.parent, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert post(url, png(stroke))[1]["epoch"] == 2
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        assert [r["epoch"] for r in json.loads(answer.read())["metrics"]] == [1, 2]


def test_a_stop_ends_serving_with_exit_0_and_a_taken_port_is_one_line(server, tmp_path):
    url, served, proc = server
    taken = subprocess.run(
        [sys.executable, MAIN, "serve", "--checkpoint", served, "--port", url.rsplit(":", 1)[1]],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert taken.returncode == 1
    assert taken.stderr.strip().splitlines()[-1].startswith("error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in taken.stderr
    proc.send_signal(signal.SIGINT)  # Ctrl-C; docker stop sends the image's STOPSIGNAL, SIGINT
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in proc.out.rest(10)


# Debian's chromium (CI installs it), or the Chrome a hosted runner has.
BROWSER = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)


@pytest.mark.skipif(
    not (BROWSER and shutil.which("chromedriver")) and not os.getenv("CI"),
    reason="needs Debian's chromium and chromium-driver (CI installs them)",
)
def test_a_browser_draws_a_digit_on_the_canvas_and_reads_the_answer(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1000,900"):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    shot = tmp_path / "serve-page.png"
    try:
        browser.get(url + "/")
        pad = browser.find_element(By.ID, "pad")
        # A "1": one stroke down the middle, with the pointer, as a hand draws it.
        ActionChains(browser).move_to_element_with_offset(
            pad, 0, -100
        ).click_and_hold().move_by_offset(3, 60).move_by_offset(3, 60).move_by_offset(
            2, 60
        ).release().perform()
        digit = browser.find_element(By.ID, "digit")
        WebDriverWait(browser, 30).until(lambda b: digit.text.strip() != "")
        WebDriverWait(browser, 30).until(
            lambda b: "epoch" in b.find_element(By.ID, "run").text  # the curves arrived
        )
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert digit.text.strip() == "1", browser.find_element(By.ID, "status").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 10
    finally:
        if not shot.exists():
            browser.save_screenshot(str(shot))
        browser.quit()

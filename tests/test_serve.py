"""`main.py serve`: the page, POST /predict against real test digits redrawn
as a person would (dark ink on light paper, large), its 400s, the reload
when a run saves beside it, and a real browser drawing on the canvas."""

import base64
import http.client
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import synthetic_data
from conftest import MAIN, real_mnist, run_trainer
from PIL import Image, ImageDraw, ImageOps
from procs import LineReader, alive, comm, descendants, wait_until

from mnist_hogwild.learn import data
from mnist_hogwild.serving.bounds import MAX_CONNECTIONS, PHASES

# Without the real MNIST the model is trained on synthetic digits: every
# bound and route is tested all the same; what it reads is asserted only of
# a model of the real MNIST (is_digit).
READS_DIGITS = real_mnist() is not None


def is_digit(answer, digit):
    """Whether ANSWER is DIGIT (of a model of the real MNIST), or a digit at all."""
    return answer["digit"] == digit if READS_DIGITS else answer["digit"] in range(10)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A checkpoint trained one epoch with the fast recipe, on the real MNIST
    where the tests find it, else on synthetic digits."""
    cwd = tmp_path_factory.mktemp("serve-model")
    root = real_mnist()
    if root is None:
        root = str(cwd / "data")
        synthetic_data.write_files(root, train=6400, test=500)
    flags = ["--data-dir", root, "--recipe", "fast", "--epochs", "1", "--log-interval", "10000"]
    proc = run_trainer(*flags, cwd=cwd, timeout=600)
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
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.out = LineReader(proc.stdout)
    try:
        proc.out.wait_for(lambda line: line.startswith("serving "), 60)
        yield f"http://127.0.0.1:{port}", served, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post(url, body, kind="image/png", path="/predict"):
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": kind})
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
        code, body = post(url, redrawn(test.images[index]), path="/predict?input=1")
        assert code == 200 and len(body["probabilities"]) == 10 and len(body["input"]) == 784
        assert body["name"] == str(body["digit"]) and body["epoch"] == 1
        assert abs(sum(body["probabilities"]) - 1) < 1e-3
        right += body["digit"] == int(test.labels[index])
    assert right >= 4


@pytest.mark.parametrize(
    "body, kind, says, status",
    [
        (b"hello", "text/plain", "Not a readable image", 400),
        (b"hello", "image/png", "Not a readable image", 400),
        (png(Image.new("L", (100, 100), 255)), "image/png", "No digit found", 400),
        (b"\x89PNG" + bytes(5 * 2**20), "image/png", "over 4 MB", 413),
        (png(Image.new("RGB", (6000, 6000), "white")), "image/png", "Too large to read", 413),
        (
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
            "multipart/form-data; boundary=x",
            "no file in it",
            400,
        ),
        (b"", "image/png", "The body is empty", 400),
        (
            b'--x\r\nContent-Disposition: form-data; name=f; filename="a.png"\r\n\r\n\r\n--x--\r\n',
            "multipart/form-data; boundary=x",
            "The body is empty",
            400,
        ),
    ],
    ids=["text", "not-an-image", "no-ink", "body-too-large", "decoded-too-large", "form-no-file"]
    + ["empty", "empty-file"],
)
def test_bad_bodies_get_one_sentence(server, body, kind, says, status):
    url, _, _ = server
    code, answer = post(url, body, kind)
    assert code == status and list(answer) == ["error"]
    assert says in answer["error"] and "\n" not in answer["error"]


def multipart(field, filename, payload, kind="image/png"):
    boundary = "----mnist-hogwild-test"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {kind}\r\n\r\n'
    ).encode()
    return (
        head + payload + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def test_uploads_as_people_send_them_are_read(server):
    """curl -F (any field name, after other fields), --data-binary without a
    type, a type in capitals, a JPEG sent as PNG: the bytes decide."""
    url, _, _ = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    body = png(stroke)
    jpeg = io.BytesIO()
    stroke.save(jpeg, "JPEG")
    for payload, kind in [
        multipart("file", "one.png", body),
        multipart("upload", "one.jpg", jpeg.getvalue(), "application/octet-stream"),
        (body, None),
        (body, "Image/PNG"),
        (jpeg.getvalue(), "image/png"),
    ]:
        status, answer = raw_post(url, payload, {} if kind is None else {"Content-Type": kind})
        assert status == 200 and is_digit(answer, 1), (kind, answer)


def raw_post(url, body, headers):
    """POST /predict with exactly these HEADERS (urllib would add a Content-Type)."""
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/predict", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_run_training_beside_it_is_served_at_its_next_save(server, mnist_dir):
    url, served, _ = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    assert post(url, png(stroke))[1]["epoch"] == 1
    proc = run_trainer(
        "--data-dir",
        mnist_dir,
        "--resume",
        "--more-epochs",
        "1",
        "--log-interval",
        "10000",
        "--checkpoint",
        served,
        cwd=served.parent,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert post(url, png(stroke))[1]["epoch"] == 2
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        assert [r["epoch"] for r in json.loads(answer.read())["metrics"]] == [1, 2]


def test_a_stop_ends_serving_with_exit_0_and_a_taken_port_is_one_line(server, tmp_path):
    url, served, proc = server
    taken = subprocess.run(
        [sys.executable, MAIN, "serve", "--checkpoint", served, "--port", url.rsplit(":", 1)[1]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def open_browser(tmp_path, size="1000,1000"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={size}",
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


needs_browser = pytest.mark.skipif(
    not (BROWSER and shutil.which("chromedriver")) and not os.getenv("CI"),
    reason="needs Debian's chromium and chromium-driver (CI installs them)",
)


@needs_browser
def test_a_browser_uploads_and_drops_a_photo_and_reads_the_answers(server, tmp_path, mnist_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    photo = Image.new("RGB", (600, 450), (236, 230, 214))  # a "7" on paper, as a phone takes it
    ImageDraw.Draw(photo).line([(220, 110), (390, 110), (270, 360)], fill=(40, 40, 70), width=22)
    photo.save(tmp_path / "seven.jpg", "JPEG")
    one = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(one).line([(150, 40), (140, 260)], fill=0, width=20)
    browser, shot = open_browser(tmp_path), tmp_path / "serve-upload.png"
    try:
        browser.get(url + "/")
        digit = browser.find_element(By.ID, "digit")
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "seven.jpg"))
        WebDriverWait(browser, 30).until(lambda b: digit.text.strip() == "7")
        # A drop: the browser's own DragEvent with a File of the PNG's bytes.
        browser.execute_script(
            "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
            "const data = new DataTransfer();"
            "data.items.add(new File([bytes], 'one.png', {type: 'image/png'}));"
            "document.getElementById('pad').dispatchEvent("
            "  new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));",
            base64.b64encode(png(one)).decode(),
        )
        WebDriverWait(browser, 30).until(lambda b: digit.text.strip() == "1")
        WebDriverWait(browser, 30).until(lambda b: "epoch" in b.find_element(By.ID, "run").text)
        browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        run = browser.find_element(By.ID, "run").text
        assert run.startswith("model_checkpoint.pth: ") and "/" not in run.split(":")[0]
    finally:
        if not shot.exists():
            browser.save_screenshot(str(shot))
        browser.quit()


@needs_browser
def test_a_browser_draws_a_digit_on_the_canvas_and_reads_the_answer(server, tmp_path, mnist_dir):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    browser = open_browser(tmp_path)
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


def big_page_png():
    """A 7000x7000 grey page with one stroke: 49 million pixels, a few hundred KB."""
    page = Image.new("L", (7000, 7000), 255)
    ImageDraw.Draw(page).line([(3500, 1000), (3300, 6000)], fill=0, width=300)
    return png(page)


def test_the_page_answers_while_a_huge_image_is_read(server):
    """The decoding runs off the event loop: GET / keeps answering, each far
    faster than the upload takes (a loop doing the work would hold them all)."""
    url, _, _ = server
    big, answers, pages = big_page_png(), [], []
    upload = threading.Thread(target=lambda: answers.append(timed(raw_post, url, big, {})))
    upload.start()
    while upload.is_alive():
        pages.append(timed(urllib.request.urlopen, url + "/", timeout=30)[1])
    upload.join()
    (((status, body), took),) = answers
    assert status == 200 and is_digit(body, 1), body
    assert len(pages) >= 3, "premise: the page was asked for while the image was read"
    assert max(pages) < took / 3, (max(pages), took)


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    return call(*args, **kwargs), time.perf_counter() - started


def test_slow_clients_are_closed_and_never_lock_others_out(server):
    """600 connections that send a request's headers a byte at a time (over
    the server's 512): the oldest are closed at once, the rest at the header
    deadline; normal requests are answered meanwhile; the log stays short."""
    url, _, proc = server
    host, port = url.split("//")[1].split(":")
    slow = [socket.create_connection((host, int(port))) for _ in range(600)]
    for s in slow:
        s.sendall(b"P")  # "POST /predict ..." never finished
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    for _ in range(5):
        status, answer = raw_post(url, png(stroke), {"Content-Type": "image/png"})
        assert status == 200 and is_digit(answer, 1)
    deadline = time.monotonic() + 60
    for s in slow:  # each gets the server's close within the header deadline
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            assert s.recv(1) == b"", "a slow connection was answered instead of closed"
        except ConnectionResetError:
            pass  # (a close with its unread byte still queued is a reset: closed all the same)
        s.close()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    log = proc.out.rest(10).splitlines()
    assert "Traceback" not in "\n".join(log) and len(log) < 10, log
    assert any("closed connections that sent no request" in line for line in log), log


def test_an_unreadable_checkpoint_is_warned_about_once(server):
    url, served, proc = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    served.write_bytes(b"not a checkpoint")
    for _ in range(3):
        assert post(url, png(stroke))[0] == 200  # the last good model serves on
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    warnings = [line for line in proc.out.rest(10).splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "still serving the model of epoch 1" in warnings[0], warnings


def test_image_readers_that_die_are_replaced_and_every_request_is_answered(server):
    """The image readers killed twice over (as the kernel's OOM killer would):
    the spawner forks one in each one's place, and each request is answered."""
    url, _, proc = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)

    def named(name):
        return sorted(p for p in descendants(proc.pid) if comm(p) == name and alive(p))

    # Each forked process names itself once it runs: wait for the names (premise).
    assert wait_until(
        lambda: named("serve-worker") and len(named("serve-spawner")) == 1, 30
    ), descendants(proc.pid)
    readers, spawner = named("serve-worker"), named("serve-spawner")
    seen = set(readers + spawner)
    for _ in range(2):
        for pid in readers:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda gone=tuple(readers): not any(map(alive, gone)), 30)  # premise
        for _ in range(len(readers) + 2):
            status, answer = post(url, png(stroke))
            assert status == 200 and is_digit(answer, 1), answer
        count = len(readers)  # (the replacements name themselves once they run)
        assert wait_until(lambda n=count: len(named("serve-worker")) >= n, 30)
        replaced = named("serve-worker")
        assert len(replaced) == len(readers) and not set(replaced) & seen, (readers, replaced)
        readers = replaced
        seen |= set(replaced)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    log = proc.out.rest(10)
    assert "warning: workers: " in log and "Traceback" not in log, log
    assert wait_until(lambda: not any(alive(p) for p in seen), 10)  # none left behind


def test_predict_answers_what_readme_shows_and_health_and_the_access_log(server):
    """README: {"digit", "name", "probabilities", "epoch"} (the 28x28 input only
    when asked), GET /healthz, and one access-log line a request."""
    url, _, proc = server
    stroke = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(stroke).line([(100, 20), (100, 180)], fill=0, width=14)
    status, answer = post(url, png(stroke))
    assert status == 200 and list(answer) == ["digit", "name", "probabilities", "epoch"], answer
    with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
        health = json.loads(response.read())
    connections = health.pop("connections")
    assert list(connections) == ["open", *(f"waiting for {k}" for k in PHASES)], connections
    assert health == {
        "status": "ok",
        "epoch": 1,
        "dataset": "mnist",
        "checkpoint": "model_checkpoint.pth",
        "waiting": {"small": 0, "large": 0},
    }
    logged = [
        proc.out.wait_for(lambda line: '"POST /predict HTTP/1.1" 200 ' in line, 30),
        proc.out.wait_for(lambda line: '"GET /healthz HTTP/1.1" 200 ' in line, 30),
    ]
    logged = [line.strip() for line in logged]
    assert all(line.startswith("127.0.0.1:") and line.endswith("ms") for line in logged), logged
    with open(os.path.join(os.path.dirname(MAIN), "README.md")) as f:
        readme = f.read()
    assert '{"digit": 7, "name": "7", "probabilities": [...], "epoch": 1}' in readme
    assert "/healthz" in readme


# Where the page's parts are: nothing may move when the first answer arrives.
PLACES = (
    "return ['pad', 'digit', 'bars', 'seen', 'loss'].map(id => {"
    "const r = document.getElementById(id).getBoundingClientRect();"
    "return [id, Math.round(r.left), Math.round(r.top)]; })"
    ".concat([['training', Math.round(document.querySelector('h1.section')"
    ".getBoundingClientRect().top), 0]])"
)


@needs_browser
@pytest.mark.parametrize("size", ["1280,900", "390,1800"], ids=["desktop", "phone"])
def test_the_page_keeps_its_layout_when_the_first_answer_arrives(server, tmp_path, size):
    """At a desktop's and a phone's width, every part is where it was before
    the first answer (SCREENSHOTS=DIR keeps the pictures to look at)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    stroke = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(stroke).line([(150, 40), (140, 260)], fill=0, width=20)
    (tmp_path / "one.png").write_bytes(png(stroke))
    keep = os.environ.get("SCREENSHOTS") or str(tmp_path)
    name = "phone" if size.startswith("390") else "desktop"
    browser = open_browser(tmp_path, size)
    try:
        browser.get(url + "/")
        before = browser.execute_script(PLACES)
        browser.save_screenshot(os.path.join(keep, f"page-{name}-before.png"))
        browser.find_element(By.ID, "file").send_keys(str(tmp_path / "one.png"))
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "digit").text.strip())
        after = browser.execute_script(PLACES)
        browser.save_screenshot(os.path.join(keep, f"page-{name}-after.png"))
        assert after == before
        # The "Training" heading keeps its distance from what is above it.
        seen = browser.find_element(By.ID, "seen").rect
        heading = browser.find_element(By.CSS_SELECTOR, "h1.section").rect
        assert heading["y"] - (seen["y"] + seen["height"]) >= 16
    finally:
        browser.quit()


def health(url):
    with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
        return json.loads(response.read())


def test_slow_bodies_beyond_the_connection_bound_never_cost_a_good_client_its_answer(server):
    """Over MAX_CONNECTIONS clients that sent their headers and then trickle
    their bodies, reconnecting when closed: each good client that connects
    closes one of them (with no answer), never itself, and gets its answer."""
    url, _, proc = server
    address = url.removeprefix("http://").split(":")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))

    def slow_client():
        s = socket.create_connection((address[0], int(address[1])), timeout=30)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nP")
        s.setblocking(False)  # (peek's MSG_DONTWAIT: a timeout would wait first)
        return s

    # Health asked on one kept-alive connection: asking opens none.
    asking = http.client.HTTPConnection(address[0], int(address[1]), timeout=30)

    def full():
        """The premise: the server holds all the connections it may, and every
        slow client's headers are in (it waits for its body): a connection
        more is over the bound, and only slow bodies are there to close."""
        asking.request("GET", "/healthz")
        said = json.loads(asking.getresponse().read())["connections"]
        return said["open"] == MAX_CONNECTIONS and said["waiting for headers"] == 0

    slow, evicted, answers = [slow_client() for _ in range(MAX_CONNECTIONS + 8)], 0, []
    # (asking connects after them: an idle kept-alive connection waits on its
    # client too, and the one waiting longest is closed first)
    stroke = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(stroke).line([(50, 10), (50, 90)], fill=0, width=8)
    for _ in range(3):
        assert wait_until(full, 30)
        answers.append(post(url, png(stroke))[0])
        assert wait_until(lambda: any(peek(s) is not None for s in slow), 30)
        for i, s in enumerate(slow):  # the ones closed reconnect, as the clients did
            if (said := peek(s)) is not None:
                evicted += said == b""  # closed with no answer
                s.close()
                slow[i] = slow_client()
    asking.close()
    for s in slow:
        s.close()
    assert answers == [200] * 3, answers
    assert evicted >= 8 + 3, evicted  # one for each connection beyond the bound
    proc.out.wait_for(lambda line: "connections: closed the one waiting longest" in line, 30)


def peek(s):
    """What a slow client's socket has: b"" once closed, None while open and silent."""
    try:
        return s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""


def test_large_images_never_hold_small_ones(server):
    """The worker for large images stopped (SIGSTOP) with three 7000x7000 PNGs
    waiting for it, more than there are workers for small ones: small images
    are answered all the while, and the large ones once it runs again."""
    url, _, proc = server
    assert wait_until(lambda: any(comm(p) == "serve-large" for p in descendants(proc.pid)), 30)
    (large,) = [p for p in descendants(proc.pid) if comm(p) == "serve-large"]
    page = Image.new("L", (7000, 7000), 255)
    ImageDraw.Draw(page).line([(3500, 1000), (3300, 6000)], fill=0, width=300)
    big, answers = png(page), []
    os.kill(large, signal.SIGSTOP)
    try:
        threads = [
            threading.Thread(target=lambda: answers.append(post(url, big))) for _ in range(3)
        ]
        for t in threads:
            t.start()
        assert wait_until(lambda: health(url)["waiting"]["large"] == 3, 60)  # the premise
        stroke = Image.new("L", (100, 100), 255)
        ImageDraw.Draw(stroke).line([(50, 10), (50, 90)], fill=0, width=8)
        for _ in range(10):
            status, answer = post(url, png(stroke))
            assert status == 200 and is_digit(answer, 1), answer
        assert answers == [] and health(url)["waiting"]["large"] == 3
    finally:
        os.kill(large, signal.SIGCONT)
    for t in threads:
        t.join(timeout=60)
    assert [status for status, _ in answers] == [200] * 3, answers


def test_a_checkpoint_of_another_data_set_prepares_and_answers_the_first_request(server):
    """The served file replaced (atomically) by a Fashion-MNIST checkpoint: the
    very next request is prepared as Fashion-MNIST's and answered by its model."""
    from helpers import valid_state  # noqa: PLC0415

    from mnist_hogwild.serving.images import prepare_image  # noqa: PLC0415
    from mnist_hogwild.training import checkpoint  # noqa: PLC0415

    url, served, _ = server
    stroke = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(stroke).line([(50, 10), (50, 90)], fill=0, width=8)
    status, before = post(url, png(stroke), path="/predict?input=1")
    assert status == 200 and "digit" in before
    state = valid_state(epoch=7)
    state["config"] = {**state["config"], "dataset": "fashion-mnist"}
    checkpoint.save(state, str(served))
    status, after = post(url, png(stroke), path="/predict?input=1")
    assert status == 200 and "class" in after and after["epoch"] == 7, after
    expected = prepare_image("stroke", "fashion-mnist", io.BytesIO(png(stroke)))
    assert after["input"] == expected.flatten().tolist() != before["input"]


def test_a_metrics_line_nested_past_what_json_reads_is_skipped(server):
    url, served, _ = server
    with open(served.with_suffix(".metrics.jsonl"), "a") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
    with urllib.request.urlopen(url + "/metrics", timeout=30) as answer:
        assert answer.status == 200
        assert [r["epoch"] for r in json.loads(answer.read())["metrics"]] == [1]


def test_the_load_script_sets_serve_beside_the_framework_and_a_naive_server(model, tmp_path):
    """scripts/serve_load.py as docs/performance.md runs it, briefly: a row for
    each server, none failed, and the large images' lines."""
    script = os.path.join(os.path.dirname(MAIN), "scripts", "serve_load.py")
    proc = subprocess.run(
        [sys.executable, script, "--checkpoint", model, "--clients", "2", "--seconds", "0.5"]
        + ["--repeats", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| 2 | ")]
    rows = [row for row in rows if len(row) == 8]  # (the servers' table: 8 columns)
    assert [row[1] for row in rows] == ["ceiling", "naive", "serve"], proc.stdout
    assert all(row[6] == "0" for row in rows), proc.stdout  # none failed
    assert "While large images are read (serve):" in proc.stdout

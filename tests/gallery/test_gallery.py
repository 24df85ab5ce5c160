"""The results gallery: trials read (never written), a read-only server whose paths cannot leave the served folder, a
static export, and the page itself in a real headless browser (Debian's Chromium through Selenium)."""

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_EXT = os.path.join(REPO, "tests", "fixtures", "toy_ext")
TOY_YAML = os.path.join(REPO, "tests", "fixtures", "toy.yaml")


def _launch(args, cwd):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("THREESTUDIO_TRIAL_TIMESTAMP", None)
    r = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args, "trainer.enable_progress_bar=false"],
                       cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A few tiny runs: the toy recipe twice, the quick start (video, curves, a GLB) and gaussian-recon (a PLY)."""
    from threestudio.data.synthetic_scene import make_scene

    base = tmp_path_factory.mktemp("gallery")
    out = base / "outputs"
    scene = str(base / "scene")
    make_scene(scene, n_train=8, n_test=3, resolution=32, supersample=1, progress=False)
    _launch(["--config", TOY_YAML, "--train", "--extensions", TOY_EXT, f"exp_root_dir={out}", "tag=first"], base)
    _launch(["--config", TOY_YAML, "--train", "--extensions", TOY_EXT, f"exp_root_dir={out}", "tag=second",
             "trainer.max_steps=9"], base)
    _launch(["--config", os.path.join(REPO, "configs", "quickstart.yaml"), "--train", f"exp_root_dir={out}",
             f"data.dataroot={scene}", "data.synthetic_scene=null", "trainer.max_steps=60",
             "trainer.val_check_interval=30", "system.exporter.texture_size=64", "system.exporter.max_faces=2000",
             "system.geometry.isosurface_threshold=auto"], base)
    _launch(["--config", os.path.join(REPO, "configs", "gaussian-recon.yaml"), "--train", f"exp_root_dir={out}",
             f"data.dataroot={scene}", "data.synthetic_scene=null", "trainer.max_steps=20",
             "trainer.val_check_interval=10", "system.geometry.init_num_points=300",
             "system.export_turntable_views=2"], base)
    return out


def snapshot(root):
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = "dir"
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[p] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


@pytest.fixture
def server(outputs):
    from threestudio.gallery.server import make_server

    httpd, url = make_server(str(outputs), port=0)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield url
    httpd.shutdown()
    httpd.server_close()


def _get(url, path, method="GET", headers=None):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, dict(r.getheaders()), body


# ------------------------------------------------------------------------------------------------ reading trials
def test_trials_summaries_and_statuses(outputs, tmp_path):
    from threestudio.gallery import trials as T

    found = {T.summary(str(outputs), t)["id"]: T.summary(str(outputs), t) for t in T.find_trials(str(outputs))}
    assert sorted(s["name"] for s in found.values()) == ["gaussian-recon", "quickstart", "toy", "toy"]
    assert all(s["status"] == "finished" for s in found.values())
    quick = next(s for s in found.values() if s["name"] == "quickstart")
    assert quick["steps"] == 60 and quick["max_steps"] == 60 and quick["best"]["name"] == "test/psnr"
    assert quick["dataroot"].endswith("scene") and quick["train_time_s"] > 0
    d = T.details(str(outputs), os.path.join(str(outputs), quick["id"]))
    assert any(v.endswith("it60-test.mp4") for v in d["media"]["videos"])
    assert any(m.endswith("model.glb") for m in d["media"]["meshes"])
    assert [g["step"] for g in d["media"]["grids"]] == [30, 60]
    assert "data.dataroot=" + quick["dataroot"] in d["overrides"] and d["commands"]["resume"].endswith(quick["id"])
    import csv

    with open(os.path.join(str(outputs), quick["id"], "csv_logs", "metrics.csv")) as f:
        n = sum(1 for r in csv.DictReader(f) if r.get("train/loss"))
    assert len(d["curves"]["columns"]["train/loss"]["value"]) == n > 0
    gs = next(s for s in found.values() if s["name"] == "gaussian-recon")
    assert T.details(str(outputs), os.path.join(str(outputs), gs["id"]))["media"]["splats"]
    # statuses from status.json: running (this process), killed (a process that is gone), interrupted, failed
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(str(outputs), quick["id"]), copy / "exp" / "t@1")
    st = copy / "exp" / "t@1" / "status.json"
    for payload, expected in (({"status": "running", "pid": os.getpid(), "host": socket.gethostname()}, "running"),
                              ({"status": "running", "pid": 2**22 + 7, "host": socket.gethostname()}, "killed"),
                              ({"status": "interrupted", "exit_code": 130}, "interrupted"),
                              ({"status": "failed", "exit_code": 1}, "failed")):
        st.write_text(json.dumps(payload))
        assert T.status_of(str(copy / "exp" / "t@1")) == expected


# ------------------------------------------------------------------------------------------------ the server
def test_server_is_read_only_and_never_leaves_the_folder(outputs, server, tmp_path):
    before = snapshot(str(outputs))
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the gallery")
    link_dir = os.path.join(str(outputs), "toy")
    os.symlink(str(outside), os.path.join(link_dir, "link-out.txt"))
    try:
        status, _, body = _get(server, "/api/trials")
        assert status == 200 and len(json.loads(body)) == 4
        tid = json.loads(body)[0]["id"]
        status, _, body = _get(server, "/api/trial?id=" + urllib.parse.quote(tid))
        assert status == 200 and json.loads(body)["id"] == tid
        for bad in ["/files/../secret.txt", "/files/%2e%2e/%2e%2e/etc/passwd", "/files//etc/passwd",
                    "/files/toy/link-out.txt", "/files/" + urllib.parse.quote(str(outside)),
                    "/files/toy/..%2f..%2fsecret.txt", "/static/../trials.py", "/api/trial?id=../..",
                    "/api/trial?id=" + urllib.parse.quote(str(outputs)), "/files/toy%5c..%5c..%5csecret.txt"]:
            status, _, body = _get(server, bad)
            assert status == 404 and b"not for the gallery" not in body, bad
        for method in ("POST", "PUT", "DELETE"):
            assert _get(server, "/files/" + tid + "/cmd.txt", method=method)[0] == 405
        # a real file, whole and by range (video seeking)
        rel = tid + "/cmd.txt"
        data = open(os.path.join(str(outputs), rel), "rb").read()
        status, headers, body = _get(server, "/files/" + urllib.parse.quote(rel))
        assert status == 200 and body == data
        status, headers, body = _get(server, "/files/" + urllib.parse.quote(rel), headers={"Range": "bytes=3-9"})
        assert status == 206 and body == data[3:10] and headers["Content-Range"] == f"bytes 3-9/{len(data)}"
        assert _get(server, "/files/" + urllib.parse.quote(rel), headers={"Range": "bytes=999999-"})[0] == 416
    finally:
        os.remove(os.path.join(link_dir, "link-out.txt"))
    assert snapshot(str(outputs)) == before


def test_static_export(outputs, tmp_path):
    from threestudio.gallery.__main__ import main

    before = snapshot(str(outputs))
    site = tmp_path / "site"
    assert main([str(outputs), "--export", str(site)]) == 0
    assert snapshot(str(outputs)) == before
    data = (site / "data.js").read_text()
    payload = json.loads(data[len("window.GALLERY_DATA = "):].rstrip().rstrip(";"))
    assert len(payload["trials"]) == 4
    for d in payload["details"].values():
        for rel in d["media"]["videos"] + d["media"]["meshes"]:
            assert (site / "files" / rel).is_file()
    assert '<script src="data.js"></script>' in (site / "index.html").read_text()
    assert (site / "static" / "vendor" / "model-viewer.min.js").is_file()
    # never inside the served folder; never over a folder of the user's
    assert main([str(outputs), "--export", str(outputs / "site")]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main([str(outputs), "--export", str(tmp_path / "mine")]) == 2
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    assert main([str(outputs), "--export", str(site)]) == 0  # an earlier export may be refreshed
    assert snapshot(str(outputs)) == before


# ------------------------------------------------------------------------------------------------ in a browser
def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip("no headless browser here: install Debian's chromium and chromium-driver (apt-get install "
                    "chromium chromium-driver) to run the gallery's browser tests")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
              "--enable-unsafe-swiftshader", "--window-size=1400,1800", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    opts.binary_location = chrome
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(d, script, timeout=30.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = d.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def _std(png):
    import io

    import numpy as np
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64).std())


@pytest.mark.slow
def test_the_page_in_a_headless_browser(outputs, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = snapshot(str(outputs))
    d = _browser()
    try:
        d.get(server)
        _wait(d, "return document.body.dataset.ready === '1'")
        rows = d.find_elements(By.CSS_SELECTOR, "#rows tr")
        assert len(rows) == 4
        # filtering: by recipe, by text, by status
        Select(d.find_element(By.ID, "f-recipe")).select_by_visible_text("toy")
        assert len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == 2
        Select(d.find_element(By.ID, "f-recipe")).select_by_index(0)
        d.find_element(By.ID, "f-text").send_keys("second")
        assert [r.text.split()[0] for r in d.find_elements(By.CSS_SELECTOR, "#rows tr")] == ["toy"]
        d.find_element(By.ID, "f-text").clear()
        d.execute_script("document.getElementById('f-text').dispatchEvent(new Event('input'))")
        Select(d.find_element(By.ID, "f-status")).select_by_visible_text("finished")
        assert len(d.find_elements(By.CSS_SELECTOR, "#rows tr")) == 4
        # the quick-start trial: a video plays, the GLB viewer draws the mesh, the curves have the CSV's points
        tid = d.execute_script("return [...document.querySelectorAll('#rows tr')].map(r => r.dataset.id)"
                               ".find(i => i.startsWith('quickstart/'))")
        # the list re-renders (live refresh): click through the page rather than hold an element
        d.execute_script("document.querySelector(`#rows tr[data-id='${arguments[0]}'] td:nth-child(2)`).click()", tid)
        _wait(d, "return document.querySelector('.pane video') !== null")
        d.execute_script("document.querySelector('.pane video').play()")
        _wait(d, "return document.querySelector('.pane video').currentTime > 0.05", timeout=20)
        assert d.execute_script("return document.querySelector('.pane video').error") is None
        _wait(d, "const m = document.querySelector('model-viewer'); return m && m.loaded && m.modelIsVisible", 60)
        time.sleep(1.0)
        mv = d.find_element(By.CSS_SELECTOR, "model-viewer")
        assert _std(mv.screenshot_as_png) > 5.0  # not a blank canvas
        import csv

        with open(os.path.join(str(outputs), tid, "csv_logs", "metrics.csv")) as f:
            n = sum(1 for r in csv.DictReader(f) if r.get("train/loss"))
        svg = d.find_element(By.CSS_SELECTOR, "svg.curve[data-column='train/loss']")
        points = d.execute_script("return arguments[0].querySelector('polyline').points.numberOfItems", svg)
        assert int(svg.get_attribute("data-points")) == points == n > 0
        # overrides highlighted in the config
        highlighted = [e.text for e in d.find_elements(By.CSS_SELECTOR, "pre.config .set")]
        assert any("dataroot" in h for h in highlighted)
        # compare two trials side by side
        d.get(server)
        _wait(d, "return document.body.dataset.ready === '1'")
        for i in range(2):  # each click re-renders the list: find the boxes again
            d.find_elements(By.CSS_SELECTOR, "#rows .pick")[i].click()
        d.find_element(By.ID, "compare").click()
        _wait(d, "return document.querySelectorAll('.panes.two .pane').length === 2")
    finally:
        d.quit()
    assert snapshot(str(outputs)) == before

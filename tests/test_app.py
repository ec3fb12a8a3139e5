"""`braintumor app`: the page in a real browser (Playwright driving Debian's Chromium), and its server over HTTP.

The browser test starts `braintumor app` as a user would, drops a JPEG, a 16-bit DICOM, a NIfTI volume and a
broken file on the page with the keyboard only, and checks what it shows against `braintumor predict` on the same
files. Without Chromium (apt-get install -y chromium) or Playwright (pip install playwright) it is skipped, with
that hint; under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scan_files import dicom_bytes, nifti_bytes

from braintumor.app.answers import Answers, model_facts
from braintumor.app.server import create_app, exposure_warning
from braintumor.cli import main
from braintumor.model.predictor import Predictor
from braintumor.processes import free_port, start_process, stop_process, venv_env, wait_http

CHROMIUM_HINT = (
    "the page's browser tests need Debian's Chromium and Playwright for Python: "
    "apt-get install -y chromium && pip install playwright"
)


@pytest.fixture(scope="module")
def scans(sample_root, module_dir) -> dict[str, Path]:
    """A JPEG, a 16-bit DICOM with a VOI window, a 6-slice NIfTI volume (.nii.gz) and a broken JPEG, made here."""
    folder = module_dir / "scans"
    folder.mkdir()
    testing = sorted((sample_root / "Testing").rglob("*.jpg"))
    pictures = [np.asarray(Image.open(p).convert("L")) for p in testing[:6]]  # (64, 64) uint8 each
    files = {
        "jpeg": folder / "axial t1.jpg",
        "dicom": folder / "series 2.dcm",
        "nifti": folder / "volume.nii.gz",
        "broken": folder / "broken.jpg",
    }
    shutil.copy(testing[0], files["jpeg"])
    stored = pictures[1].astype(np.uint16) * 16  # 12-bit values, shown through the file's own window
    files["dicom"].write_bytes(dicom_bytes(stored, WindowCenter=2040, WindowWidth=4080))
    volume = np.stack([p.T[::-1, ::-1] for p in pictures], axis=2).astype(np.int16)  # (X, Y, Z) RAS+, axial
    files["nifti"].write_bytes(nifti_bytes(volume, gz=True))
    files["broken"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return files


@pytest.fixture(scope="module")
def predicted(scans, novelty_model_file, module_dir) -> tuple[pd.DataFrame, str]:
    """`braintumor predict` on the same files: the numbers the page must show (file names for paths), and what it
    printed."""
    output, printed = module_dir / "predict.csv", io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main_status(
            ["predict", *map(str, scans.values()), "--model", str(novelty_model_file[0]), "--output", str(output)]
        )
    assert code == 0
    table = pd.read_csv(output)
    table["file"] = [Path(f).name for f in table["file"]]
    return table, printed.getvalue()


def main_status(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def app_url(novelty_model_file, module_dir):
    """`braintumor app --model FILE --port P` in a process of its own, as a user starts it."""
    port, log = free_port(), module_dir / "app.log"
    proc = start_process(
        [sys.executable, "-m", "braintumor.cli", "app", "--model", str(novelty_model_file[0]), "--port", str(port)],
        log,
        env={**venv_env(), "BRAINTUMOR_PREDICTION_LOG": str(module_dir / "app-log") + "/"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/api/model", proc, log, "braintumor app", timeout=120)
        yield url
    finally:
        stop_process(proc)
    assert "open http://127.0.0.1:" in log.read_text()
    for name in ("axial t1", "series 2", "volume", "broken"):  # no file name reaches the server's log
        assert name not in log.read_text()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if sync_playwright is None or chromium is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {CHROMIUM_HINT}")
        pytest.skip(CHROMIUM_HINT)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


def _close(page_value: str, expected: float) -> bool:
    return abs(float(page_value) - expected) <= 0.0005 + 1e-9  # the page shows 3 decimals


def _check_shown(card, row: pd.Series, classes: list[str]) -> None:
    """The label, probability and each class's bar on a card (or its summary) are predict's row's."""
    assert card.locator(".label-name").inner_text() == row["label"]
    assert _close(card.locator(".label-probability").inner_text(), row["probability"])
    for name in classes:
        assert _close(card.locator(f'.bars li[data-class="{name}"] .value').inner_text(), row[name])
    assert abs(float(card.locator(".novelty-score").inner_text()) - row["novelty"]) <= 0.005 + 1e-9  # 2 decimals
    assert card.locator(".warning").count() == int(bool(row["unlike_training"]))


def _open_file_chooser_by_keyboard(page):
    """Space (then Enter) on the focused file input: headless Chromium now and then drops the first key press
    on a CI runner's first page (no chooser within 30 s, seen once in 2026-12 CI), so each key gets 10 s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for key in ("Space", "Space", "Enter"):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press(key)
            return chooser.value
        except PlaywrightTimeout:
            assert page.evaluate("document.activeElement.id") == "files", "the file picker lost the focus"
    pytest.fail("neither Space nor Enter on the focused file picker opened a file chooser")


@pytest.mark.slow
def test_the_page_shows_predicts_answers_and_evidence(browser, app_url, scans, predicted, novelty_model_file, tmp_path):
    predicted, printed = predicted
    classes = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    requests, problems = [], []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def only_this_server(route):
        requests.append(route.request.url)
        if route.request.url.startswith(f"{app_url}/"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", only_this_server)
    page.goto(app_url)
    page.wait_for_selector("body[data-ready=true]")
    assert "Research use; not a medical device." in page.inner_text("header")
    assert "model.pt" in page.inner_text("#model") and "no model card" in page.inner_text("#model")

    # Keyboard only: Tab to the file picker, open it with Space, choose the four files.
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "files":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "files"
    chooser = _open_file_chooser_by_keyboard(page)
    chooser.set_files([str(path) for path in scans.values()])
    page.wait_for_function("() => document.querySelectorAll('article.scan').length === 4", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#status').textContent === 'All files answered.'")

    def card(path: Path):
        return page.locator(f'article.scan[aria-label="{path.name}"]')

    def rows(path: Path) -> pd.DataFrame:
        return predicted[predicted["file"] == path.name]

    # The JPEG and the DICOM: one picture each, predict's numbers.
    for kind in ("jpeg", "dicom"):
        _check_shown(card(scans[kind]).locator(".answer"), rows(scans[kind]).iloc[0], classes)

    # The broken file: predict's reason, on its own card; the others were still answered.
    reason = card(scans["broken"]).locator(".reason").inner_text()
    assert reason.startswith("Cannot be used: ")
    assert f"skipped {scans['broken']}: {reason[len('Cannot be used: ') :]}\n" in printed

    # The volume: its middle slice first, then keyboard only to its slider and one slice on.
    volume, slices = card(scans["nifti"]), rows(scans["nifti"])
    per_slice, summary = slices[slices["frame"].notna()], slices[slices["frame"].isna()].iloc[0]
    assert volume.locator(".position").inner_text() == "slice 2 (3 of 6)"
    _check_shown(volume.locator(".answer"), per_slice.iloc[2], classes)
    _check_shown(volume.locator(".summary"), summary, classes)
    for _ in range(30):
        if page.evaluate("document.activeElement.classList.contains('slice')"):
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == f"slice of {scans['nifti'].name}"
    page.keyboard.press("ArrowRight")
    assert volume.locator(".position").inner_text() == "slice 3 (4 of 6)"
    _check_shown(volume.locator(".answer"), per_slice.iloc[3], classes)

    # The Grad-CAM overlay is drawn over the picture the network sees: predict's Grad-CAM of that slice's label.
    heat = volume.locator("img.heat")
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=heat.element_handle())
    assert heat.is_visible() and heat.evaluate("img => getComputedStyle(img).opacity") == "0.45"
    predictor = Predictor(novelty_model_file[0])
    image = predictor.images_of(predictor.pictures(scans["nifti"]))[3]
    expected = predictor.explain(image, per_slice.iloc[3]["label"], alpha=1.0)
    shown = page.evaluate(
        """async (url) => {
        const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer()); return Array.from(bytes); }""",
        heat.get_attribute("src"),
    )
    shown = np.asarray(Image.open(io.BytesIO(bytes(shown))).convert("RGB"))
    assert shown.shape == expected.shape and np.abs(shown.astype(int) - expected).max() <= 1  # float rounding only
    drawn = page.evaluate(
        """(img) => { const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let colour = 0;
        for (let i = 0; i < d.length; i += 4) colour += Math.abs(d[i] - d[i + 2]); return colour; }""",
        heat.element_handle(),
    )
    assert drawn > 0  # a jet heat map, not a gray picture
    volume.locator(".cam-toggle").click()
    assert not heat.is_visible()
    volume.locator(".cam-toggle").click()
    assert heat.is_visible()

    # The CSV: predict's columns and rows (the page knows file names, not paths).
    with page.expect_download() as download:
        page.click("#download")
    csv = tmp_path / "page.csv"
    download.value.save_as(csv)
    table = pd.read_csv(csv)
    assert list(table.columns) == list(predicted.columns)
    assert table["file"].tolist() == predicted["file"].tolist()
    assert table["label"].tolist() == predicted["label"].tolist()
    assert table["frame"].isna().tolist() == predicted["frame"].isna().tolist()
    numbers = ["probability", *classes]
    assert (table[numbers] - predicted[numbers]).abs().max().max() <= 2e-6  # the CSV's 6 decimals
    # The novelty score (tens, here) comes from float32 features, whose last bits depend on the batch the scan was
    # in (predict sends all files in one batch, the page one file at a time): equal to float32's precision.
    assert np.allclose(table["novelty"], predicted["novelty"], rtol=1e-5, atol=2e-6)
    assert table["unlike_training"].tolist() == predicted["unlike_training"].tolist()

    screenshot = Path(os.environ.get("APP_SCREENSHOT") or tmp_path / "app.png")
    page.set_viewport_size({"width": 1100, "height": 1000})
    volume.scroll_into_view_if_needed()
    page.screenshot(path=str(screenshot))
    Image.open(screenshot).convert("RGB").quantize(colors=96).save(screenshot, optimize=True)  # docs/app.png: small
    context.close()
    assert problems == []  # no console errors
    assert requests and all(url.startswith(f"{app_url}/") for url in requests)  # nothing left 127.0.0.1


# ---- the server over HTTP, without a browser ----------------------------------------------------------------


@pytest.mark.slow
def test_the_page_logs_each_answered_picture_without_names_or_pixels(app_url, scans, predicted, module_dir):
    """BRAINTUMOR_PREDICTION_LOG set for `braintumor app`: one line per answered picture (a volume's slices, not
    its summary), predict's numbers, source "app"; the broken file logs nothing; no name reaches the log."""
    predicted, _ = predicted
    log_file = module_dir / "app-log" / "predictions.jsonl"
    before = log_file.read_text().splitlines() if log_file.exists() else []
    host = app_url.removeprefix("http://")
    for kind in ("jpeg", "nifti", "broken"):
        data = scans[kind].read_bytes()
        status, answer = _post(host, [data], length=len(data))
        assert status == 200 and ("problem" in answer) == (kind == "broken"), (kind, answer)
    lines = log_file.read_text().splitlines()[len(before) :]
    records = [json.loads(line) for line in lines]
    assert len(records) == 1 + 6  # the JPEG, the volume's six slices
    for kind, count in (("jpeg", 1), ("nifti", 6)):
        digest = hashlib.sha256(scans[kind].read_bytes()).hexdigest()
        logged = [r for r in records if r["sha256"] == digest]
        rows = predicted[(predicted["file"] == scans[kind].name) & predicted["frame"].notna()]
        assert len(logged) == len(rows) == count
        for record, (_, row) in zip(sorted(logged, key=lambda r: r["frame"]), rows.iterrows()):
            assert record["source"] == "app" and record["frame"] == int(row["frame"])
            assert record["label"] == row["label"] and abs(record["probability"] - row["probability"]) <= 2e-6
            # float32 features whose last bits depend on the batch (predict ran all files in one): as above
            assert np.isclose(record["novelty"], row["novelty"], rtol=1e-5, atol=2e-6)
            assert record["unlike_training"] == bool(row["unlike_training"])
            assert record["pictures_in_request"] == count and record["latency_ms"] > 0
    for name in ("axial t1", "volume", "broken", str(module_dir)):
        assert not any(name in line for line in lines)


@pytest.fixture(scope="module")
def small_limit_url(model_file, module_dir):
    """The app in this process (uvicorn in a thread) on a model whose params say data.max_file_bytes=20000."""
    import uvicorn

    bundle = torch.load(model_file, map_location="cpu", weights_only=True)
    bundle["params"]["data"]["max_file_bytes"] = 20_000
    path = module_dir / "small-limit.pt"
    torch.save(bundle, path)
    predictor = Predictor(path)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Answers(predictor), model_facts(str(path), path, predictor)),
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


def _post(host: str, chunks: list[bytes], length: int | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, timeout=30)
    conn.putrequest("POST", "/api/scans")
    if length is None:
        conn.putheader("Transfer-Encoding", "chunked")
    else:
        conn.putheader("Content-Length", str(length))
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if length is None else chunk)
        if length is None:
            conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered before the body was all sent
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


def test_uploads_over_the_limit_are_refused_before_and_while_they_stream(small_limit_url, sample_root):
    status, answer = _post(small_limit_url, [], length=50_000_000)  # declared: refused before a byte is read
    assert status == 413
    assert answer["problem"] == (
        "50,000,000 bytes is over the limit data.max_file_bytes=20,000; raise the limit if the scan is real"
    )
    status, answer = _post(small_limit_url, [b"\0" * 8192] * 4, length=None)  # chunked: refused once past it
    assert status == 413 and "over the limit data.max_file_bytes=20,000" in answer["problem"]
    jpeg = next((sample_root / "Testing").rglob("*.jpg")).read_bytes()
    status, answer = _post(small_limit_url, [jpeg], length=len(jpeg))  # under it: answered
    assert status == 200 and answer["pictures"][0]["label"]


def test_the_server_sends_no_third_party_content_and_forgets_no_limits(small_limit_url):
    conn = http.client.HTTPConnection(small_limit_url, timeout=30)
    conn.request("GET", "/")
    response = conn.getresponse()
    page = response.read().decode()
    policy = response.getheader("Content-Security-Policy")
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "http://" not in page and "https://" not in page  # no CDN, no web font
    conn.request("GET", "/api/scans/no-such-scan/0/gradcam.png")
    response = conn.getresponse()
    assert response.status == 404 and b"drop the file again" in response.read()
    assert response.getheader("Cache-Control") == "no-store"


def test_binding_beyond_this_machine_warns_that_there_is_no_authentication():
    for host in ("127.0.0.1", "::1", "localhost"):
        assert exposure_warning(host) is None
    warning = exposure_warning("0.0.0.0")
    assert "no authentication" in warning and "reverse proxy" in warning


def test_a_port_in_use_is_said_before_the_model_loads(capsys, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main_status(["app", "--model", str(tmp_path / "no-model.pt"), "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_registered_versions_facts_and_card_head_the_page(model_file, tmp_path, monkeypatch):
    """models:/NAME@champion: name, version, alias, registration date, data hash and the card in its artifacts."""
    from mlflow.tracking import MlflowClient

    from braintumor.predict import resolve_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    artifacts = tmp_path / "version"  # laid out as a logged model's: model_card.md beside artifacts/model.pt
    (artifacts / "artifacts").mkdir(parents=True)
    shutil.copy(model_file, artifacts / "artifacts" / "model.pt")
    (artifacts / "model_card.md").write_text("# Model card: brain-tumor-classifier version 1\n")
    client = MlflowClient(uri)
    client.create_registered_model("brain-tumor-classifier")
    version = client.create_model_version(
        "brain-tumor-classifier", artifacts.as_uri(), tags={"data_dvc_hash": "Testing:ab12,Training:cd34"}
    )
    client.set_registered_model_alias("brain-tumor-classifier", "champion", version.version)

    model = "models:/brain-tumor-classifier@champion"
    path = resolve_model(model)
    facts = model_facts(model, path, Predictor(path))
    assert (facts["name"], facts["version"], facts["aliases"]) == ("brain-tumor-classifier", "1", ["champion"])
    assert facts["data_hash"] == "Testing:ab12,Training:cd34"
    assert facts["trained"] == time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(version.creation_timestamp / 1000))
    assert facts["card"] == "# Model card: brain-tumor-classifier version 1\n"
    assert facts["disclaimer"] == "Research use; not a medical device."

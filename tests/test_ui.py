"""The web UI: the whole journey in headless Chromium against a real `loratune ui` server, plus its safety rules.

Browser: Debian's `chromium` driven by Playwright (`playwright install` cannot download here); the browser tests are
skipped, saying why, only when that binary is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests

from helpers import sum_records
from loratune.errors import LoratuneError
from loratune.workspace import Workspace

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
RECORDS = sum_records(range(5), range(4), "Arr! It be {}.")
USER, PASSWORD = "ann", "pw-for-the-test"
WAIT_MS = 90_000  # generous: the job shares two cores with everything else


# ---------------------------------------------------------------- no browser: the rules behind the UI


def test_listen_refuses_without_auth(tmp_path, capsys):
    from loratune.cli import main

    assert main(["--home", str(tmp_path), "ui", "--listen"]) == 1
    assert "--listen serves the UI to the network: give --auth" in capsys.readouterr().err


def test_ssl_certfile_and_keyfile_come_together(tmp_path, capsys):
    from loratune.cli import main

    cert = tmp_path / "cert.pem"
    cert.write_text("not read: refused before")
    assert main(["--home", str(tmp_path), "ui", "--ssl-certfile", str(cert)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "loratune: error: --ssl-certfile needs --ssl-keyfile too: give the certificate and its private key together"
    ]
    assert main(["--home", str(tmp_path), "ui", "--ssl-keyfile", str(cert)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "loratune: error: --ssl-keyfile needs --ssl-certfile too: give the certificate and its private key together"
    ]


def test_auth_parsing(tmp_path):
    from loratune.commands.ui import parse_auth

    users = tmp_path / "users.txt"
    users.write_text("ann:secret\nbob:pa:ss\n")
    assert parse_auth("me:pw", str(users)) == [("me", "pw"), ("ann", "secret"), ("bob", "pa:ss")]
    with pytest.raises(LoratuneError, match="user:password"):
        parse_auth("nopassword", None)


def test_names_from_the_browser_stay_inside_their_folders(tmp_path):
    from loratune.ui import names

    ws = Workspace.resolve(tmp_path)
    (ws.datasets / "sub").mkdir(parents=True)
    (ws.datasets / "sub" / "a.jsonl").write_text("{}\n")
    (tmp_path / "secret.txt").write_text("not yours")
    assert names.data_path(ws, "sub/a.jsonl") == str(ws.datasets / "sub" / "a.jsonl")
    assert names.dataset_choices(ws) == ["sub/a.jsonl"]
    for bad in ("../secret.txt", "/etc/passwd", "sub/../../secret.txt"):
        with pytest.raises(LoratuneError):
            names.data_path(ws, bad)
    from loratune.adapters import adapter_path  # what the Generate tab resolves LoRA choices with

    for bad in ("../x", "a/b/c", "/abs", "x/../../y"):
        with pytest.raises(LoratuneError):
            adapter_path(bad, ws)
    for bad in ("/etc", "../models", "./here", "a/../../b"):
        with pytest.raises(LoratuneError):
            names.model_source(ws, bad)
    assert names.model_source(ws, "org/model") == "org/model"  # a hub id: downloaded into models/
    assert names.upload_target(ws, "../../evil.jsonl") == ws.datasets / "evil.jsonl"  # the folder part is dropped
    with pytest.raises(LoratuneError):
        names.upload_target(ws, "run.sh")
    with pytest.raises(LoratuneError):
        names.data_format(ws, "/etc/passwd")


def test_form_round_trips_every_option():
    """The generated form, left at its defaults, gives back the default config (hard_cut's newlines included)."""
    from loratune.config import RunConfig, field_help
    from loratune.ui.form import form_values, option_types, read_form

    rows = field_help(RunConfig)
    assert set(option_types(RunConfig)) == {name for name, _, _ in rows}
    shown = form_values(RunConfig, RunConfig())
    assert shown["data.hard_cut"] == "\\n\\n\\n"
    assert read_form(RunConfig, list(shown), list(shown.values())) == RunConfig()
    edited = read_form(RunConfig, ["train.lr", "data.hard_cut"], [1e-3, "\\n---\\n"])
    assert edited.train.lr == 1e-3 and edited.data.hard_cut == "\n---\n"


def test_job_log_shows_head_and_end_of_a_long_run(tmp_path):
    """A long progress bar (carriage-return redraws, no newline) must not hide the start and end of the output."""
    from loratune import jobs

    ws = Workspace.resolve(tmp_path)
    folder = jobs.job_dir(ws, "run")
    folder.mkdir(parents=True)
    bar = "".join(f"\rtrain: {i}/100000 loss=1.0" for i in range(20_000))
    (folder / "train.log").write_text(
        f"$ loratune train\nLoading weights\ndata summary\n{bar}\nstopped at step 19999\n"
    )
    shown = jobs.log_tail(ws, "run").splitlines()
    assert shown[0] == "$ loratune train" and "data summary" in shown
    assert shown[-2:] == ["train: 19999/100000 loss=1.0", "stopped at step 19999"]


def test_metrics_are_read_incrementally_and_reread_when_rewritten(tmp_path):
    """The UI's incremental reader gives, at every moment, the rows rundir.read_metrics gives (a torn line skipped)."""
    from loratune.rundir import MetricsReader
    from loratune.rundir import read_metrics as whole_file

    reader = MetricsReader()

    def read_metrics(run_dir):
        rows = reader.rows(run_dir)
        assert rows == whole_file(run_dir)
        return rows

    def rows(steps, loss):
        return "".join(json.dumps({"step": i, "loss": loss}) + "\n" for i in steps)

    assert read_metrics(tmp_path) == []  # no file yet
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(rows(range(1, 11), 1.0))
    assert len(read_metrics(tmp_path)) == 10
    with open(metrics, "a") as f:
        f.write(rows([11], 1.0) + '{"step": 12, "lo')  # a line being written (or cut by a kill) is not read yet
    assert [r["step"] for r in read_metrics(tmp_path)][-2:] == [10, 11]
    with open(metrics, "a") as f:
        f.write('ss": 1.0}')  # whole, but its newline not written yet: read, as the whole-file reader reads it
    assert [r["step"] for r in read_metrics(tmp_path)][-2:] == [11, 12]
    with open(metrics, "a") as f:
        f.write("\nnot json\n[1, 2]\n")  # damaged lines are skipped by both
    assert [r["step"] for r in read_metrics(tmp_path)][-2:] == [11, 12]
    metrics.write_text(rows(range(1, 30), 2.0))  # a new run in the same folder, already longer than the old file
    assert [r["loss"] for r in read_metrics(tmp_path)] == [2.0] * 29


def test_job_whose_processes_vanished_is_lost(tmp_path):
    from loratune import jobs
    from loratune.jobs.supervise import write_job

    ws = Workspace.resolve(tmp_path)
    folder = jobs.job_dir(ws, "run")
    folder.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    write_job(folder, {"name": "run", "state": "running", "pid": gone.pid, "supervisor_pid": gone.pid, "started": 0})
    assert jobs.status(ws, "run").state == "lost"
    with pytest.raises(LoratuneError, match="no running job"):
        jobs.stop(ws, "run")


def random_loras(home: Path, base: Path, names: list[str], rank: int = 4) -> None:
    """Adapters in loras/ with random (non-zero) weights: distinct answers without training (peft's own format)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for n, name in enumerate(names):
        torch.manual_seed(n)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(home / "loras" / name)


def test_command_preview_is_the_train_line_of_the_form(tmp_path):
    """The Train tab's command line, run through `loratune train`'s own option parsing, gives the form's config."""
    import shlex

    from loratune.cli import build_parser
    from loratune.commands.train import train_config
    from loratune.config import RunConfig
    from loratune.ui.train_view import command_line

    config = RunConfig(name="two-files")
    config.data.path, config.train.lr, config.adapter.rank = ["a.jsonl", "b.jsonl"], 1e-3, 8
    config.data.hard_cut, config.data.columns, config.train.packing = "\n---\n", {"instruction": "q"}, False
    config.model.source = "tiny"
    words = shlex.split(command_line(config, str(tmp_path)))
    assert words[:4] == ["loratune", "--home", str(tmp_path), "train"]
    assert words[4:6] == ["--name", "two-files"] and "--train.lr" in words and "--train.epochs" not in words
    assert words[6:8] == ["--model", "tiny"]
    args, extra = build_parser().parse_known_args(words[1:])
    assert train_config(args, extra) == config


def test_train_view_shows_progress_and_retention(tmp_path):
    """The status and the bar read metrics.jsonl: step N / total, ETA, tokens/s, and the retention columns."""
    from loratune.ui.train_view import job_view

    ws = Workspace.resolve(tmp_path)
    run = ws.lora_dir("run")
    run.mkdir(parents=True)
    rows = [{"step": s, "total_steps": 40, "loss": 2.0 - s / 100, "tokens_per_s": 1234.5, "eta_s": 75} for s in (1, 2)]
    rows.append({"step": 2, "eval_loss": 1.5, "retention_kl": 0.0123, "retention_same": 0.75})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    view = job_view(ws, "run")
    assert "**step 2 / 40**" in view.status and "1,234 tokens/s" in view.status
    assert "retention at step 2: KL to the base model 0.0123 · same answers 75%" in view.status
    assert 'style="width: 5.0%"' in view.bar and "<b>step 2 / 40</b>" in view.bar
    assert view.curve["series"].tolist() == ["train", "train", "eval"]


def test_one_base_model_serves_every_lora(tmp_path, tiny_model):
    """Generate's columns: three LoRAs switched on one loaded base answer as each loaded alone, and the model in
    memory grows by the adapters' weights only."""
    from loratune.config import GenerateSpec
    from loratune.generator import Generator

    home = tmp_path / "home"
    random_loras(home, tiny_model, ["a", "b", "c"])
    spec = GenerateSpec(max_new_tokens=6)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    alone = {}
    for name in "abc":
        single = Generator(None, name, home)
        alone[name] = "".join(single.stream(single.chat_ids(messages, spec), spec))
    base_bytes = sum(p.numel() * p.element_size() for p in single.model.get_base_model().parameters()) - sum(
        p.numel() * p.element_size() for n, p in single.model.named_parameters() if "lora_" in n
    )
    shared = Generator(str(tiny_model), None, home)
    base_answer = "".join(shared.stream(shared.chat_ids(messages, spec), spec))
    for name in "abc":
        shared.use(name)
        assert "".join(shared.stream(shared.chat_ids(messages, spec), spec)) == alone[name]
    assert len(set(alone.values())) > 1  # the adapters differ, so the switch is seen
    shared.use(None)
    assert "".join(shared.stream(shared.chat_ids(messages, spec), spec)) == base_answer
    held = sum(p.numel() * p.element_size() for p in shared.model.parameters())
    lora = sum(p.numel() * p.element_size() for n, p in shared.model.named_parameters() if "lora_" in n)
    assert held == base_bytes + lora and lora < base_bytes  # one copy of the base, three small adapters


# ---------------------------------------------------------------- the journey in a real browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `loratune ui` in a subprocess; restartable on the same port (to show the job outlives the UI)."""

    def __init__(self, home: Path, log: Path, extra: tuple[str, ...] = (), https: bool = False):
        self.home, self.log, self.port, self.extra = home, log, free_port(), list(extra)
        self.url = f"{'https' if https else 'http'}://127.0.0.1:{self.port}/"
        # Only to see that it is up; the HTTPS test checks the certificate itself.
        self.context = ssl._create_unverified_context() if https else None
        self.process = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loratune.cli", "--home", str(self.home), "ui", "--port", str(self.port)]
                + ["--listen", "--auth", f"{USER}:{PASSWORD}", "--max-upload-mb", "1", *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"loratune ui exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2, context=self.context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"loratune ui did not answer on {self.url}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def ui_home(tmp_path, tiny_model) -> Path:
    home = tmp_path / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny")
    (home / "datasets").mkdir()
    (home / "datasets" / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return home


@pytest.fixture
def browser_page(tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    # Every answer waits in the UI's one-at-a-time queue behind the 2 s refreshes: at a load of 15 on two shared
    # cores that took over Playwright's default 5 s (a form fill, an error message), so wait as long as for a page.
    expect.set_options(timeout=30_000)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def open_ui(page, url: str) -> None:
    """Open the UI and log in (the test server listens with --listen, so it asks for the password)."""
    page.goto(url, timeout=WAIT_MS)  # the page loads slowly while a training job shares the two cores
    page.get_by_label("username").fill(USER)
    page.get_by_label("password").fill(PASSWORD)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Model").wait_for()


def choose(page, label: str, option: str | re.Pattern) -> None:
    """Pick an option in a Gradio dropdown (an input with a listbox)."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option).first.click()


def option(page, name: str):
    """The input of a config option in a generated form (found by the id the form gives it)."""
    from loratune.ui.form import element_id

    return page.locator(f"#{element_id(name)}").locator("input, textarea").first


def set_option(page, name: str, value) -> None:
    field = option(page, name)
    field.fill(str(value))
    field.press("Tab")  # Gradio takes the value on blur


def element_id(name: str) -> str:
    from loratune.ui.form import element_id as of

    return of(name)


def shown_step(page) -> int:
    found = re.search(r"step (\d+)", page.locator("#job-status").inner_text())
    return int(found.group(1)) if found else 0


def files_in(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes, to show that something left a folder exactly as it was."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_start_checks_the_run_name_before_touching_anything(ui_home):
    """Issue 15.2: a start that `train` would refuse is refused before any job is spawned or any record written."""
    from loratune import jobs, train
    from loratune.config import RunConfig
    from loratune.training.lock import RunLock

    ws = Workspace.resolve(ui_home)
    fast = {"model": str(ws.models / "tiny"), "data": str(ws.datasets / "sums.jsonl"), "adapter.rank": 4}
    fast |= {"train.batch_size": 4, "train.micro_batch": 4, "train.save_every": 1}
    train(home=ui_home, name="done", show_progress=False, **fast, **{"train.max_steps": 2})  # finished at step 2
    halted = train(home=ui_home, name="half", show_progress=False, stop=lambda: True, **fast, **{"train.max_steps": 4})
    assert halted.stopped and halted.steps == 1  # a stop: resumable from checkpoint-000001

    def config(name: str, overwrite: bool = False) -> RunConfig:
        run = RunConfig(name=name)
        run.model.source, run.data.path, run.train.overwrite = fast["model"], fast["data"], overwrite
        return run

    def refused(match: str, **start) -> None:
        with pytest.raises(jobs.NameTaken, match=match):
            jobs.start(ws, **start)

    before = files_in(ws.loras)
    refused(
        r"'done' already holds a finished run \(step 2\); choose another name, or tick train.overwrite",
        config=config("done"),
    )
    refused(r"'done' already finished at step 2: nothing to resume", name="done", resume=True)
    refused(r"'half' holds a run saved at step 1: press Resume to continue it", config=config("half"))
    refused(r"nothing to resume: no run named 'other'", name="other", resume=True)
    lock = RunLock()
    lock.acquire(ws.lora_dir("half"))  # as a `loratune train` from the CLI holds it while it runs
    try:
        in_use = rf"loras/half is in use by a training run \(pid {os.getpid()}\)"
        refused(in_use, config=config("half", overwrite=True))
        refused(in_use, name="half", resume=True)
    finally:
        lock.release()  # empties .lock again, as the run left it
    after = files_in(ws.loras)
    assert after == before  # no job folder, no log, no status file: nothing was written
    jobs.check_run_name(ws, "done", resume=False, overwrite=True)  # ticking overwrite lets the run be replaced
    jobs.check_run_name(ws, "half", resume=True, overwrite=False)  # and a stopped run can be resumed
    jobs.check_run_name(ws, "other", resume=False, overwrite=False)


def test_ui_serves_https_with_the_given_certificate(tmp_path):
    """Issue 15.12: --ssl-certfile/--ssl-keyfile serve the UI (login included) over HTTPS, and plain HTTP is gone."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed, so no test certificate can be made")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    (tmp_path / "home").mkdir()
    server = Server(
        tmp_path / "home", tmp_path / "ui.log", ("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)), True
    )
    server.start()
    try:
        login = requests.get(server.url, verify=str(cert), timeout=30)  # verified against our certificate
        assert login.status_code == 200 and "<html" in login.text.lower()
        assert requests.get(f"{server.url}config", verify=str(cert), timeout=30).status_code == 401  # still --auth
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(server.url.replace("https://", "http://"), timeout=30)
    finally:
        server.stop()


@pytest.mark.long
def test_whole_journey_in_chromium(ui_home, browser_page, tmp_path):
    from playwright.sync_api import expect

    page = browser_page
    shots = Path(os.environ.get("LORATUNE_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    random_loras(ui_home, ui_home / "models" / "tiny", ["lora-a", "lora-b"])  # more columns for Generate
    server = Server(ui_home, tmp_path / "ui.log")
    server.start()
    run_dir = ui_home / "loras" / "ui-run"
    try:
        page.goto(server.url)
        expect(page.get_by_role("button", name="Login")).to_be_visible()  # --listen: nothing without the password
        assert requests.get(f"{server.url}config").status_code == 401
        page.get_by_label("username").fill(USER)
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
        open_ui(page, server.url)

        # Model: the tiny model in models/.
        page.get_by_role("tab", name="Model").click()
        choose(page, "Base model", "tiny")
        page.get_by_label("Memory you have (optional)").fill("1GB")
        page.get_by_role("button", name="Estimate", exact=True).click()
        # rank 32 on attention+mlp of the tiny LLaMA: 2 layers x (q 4,096 + v 3,072 + gate, up, down 6,144 each)
        expect(page.locator("#memory-estimate")).to_contain_text("51,200 LoRA parameters", timeout=WAIT_MS)
        expect(page.locator("#memory-estimate")).to_contain_text("this fits")
        page.locator("#recommended").get_by_text("Qwen/Qwen2.5-0.5B-Instruct").click()  # a pick fills the hub id
        expect(page.get_by_label("Hub id to download into models/")).to_have_value("Qwen/Qwen2.5-0.5B-Instruct")
        page.get_by_role("button", name="Download", exact=True).click()
        expect(page.get_by_text("HF_HUB_OFFLINE is set").first).to_be_visible(timeout=WAIT_MS)  # one line, no trace
        page.screenshot(path=shots / "0-model.png", full_page=True)

        # Dataset: an upload lands in datasets/ and is chosen; then pick the prepared file and check it.
        page.get_by_role("tab", name="Dataset").click()
        upload = tmp_path / "uploaded.jsonl"
        upload.write_text(json.dumps(RECORDS[0]) + "\n")
        page.locator("#dataset-upload input[type=file]").set_input_files(upload)
        expect(page.get_by_label("Dataset", exact=True)).to_have_value("uploaded.jsonl", timeout=WAIT_MS)
        assert (ui_home / "datasets" / "uploaded.jsonl").read_text() == upload.read_text()
        cookies = {c["name"]: c["value"] for c in page.context.cookies()}  # the logged-in session
        big = {"files": ("big.jsonl", b"x" * 1_500_000)}
        assert requests.post(f"{server.url}gradio_api/upload", files=big, cookies=cookies).status_code == 413
        assert not (ui_home / "datasets" / "big.jsonl").exists()  # over --max-upload-mb 1: refused
        choose(page, "Dataset", "sums.jsonl")
        page.get_by_role("button", name="Check data").click()
        expect(page.locator("#data-summary")).to_contain_text("20 records", timeout=WAIT_MS)
        expect(page.locator("#data-summary")).to_contain_text("20 samples")
        # The mask view: the answer is trained (green), the prompt and template are masked (grey).
        trained = page.locator("#mask-view .mask-sample .mask-trained")
        expect(trained.first).to_contain_text("Arr! It be")
        expect(page.locator("#mask-view .mask-sample .mask-masked").first).to_contain_text("What is")
        assert len(page.locator("#mask-view .mask-sample").all()) == 3
        expect(page.locator("#data-warnings")).to_contain_text("No problems found")
        page.screenshot(path=shots / "1-dataset.png", full_page=True)

        # Train: the form was filled by the other tabs; the options set every time are in view, the rest folded.
        page.get_by_role("tab", name="Train").click()
        expect(option(page, "model.source")).to_have_value("tiny")
        expect(option(page, "data.path")).to_have_value("sums.jsonl")
        for name in ("adapter.rank", "adapter.alpha", "adapter.targets", "train.lr", "train.epochs", "data.cutoff"):
            expect(option(page, name)).to_be_visible()
        expect(option(page, "train.eval_every")).to_be_hidden()
        expect(option(page, "adapter.dropout")).to_be_hidden()
        last = page.locator(f"#{element_id('data.eval_split')}").bounding_box()
        assert last["y"] + last["height"] < 1000  # the options set every time fit the first screen
        assert page.locator("#job-status").bounding_box()["y"] < 1000  # beside them, the job's status
        option(page, "name").fill("ui-run")
        set_option(page, "train.max_steps", 100_000)
        set_option(page, "train.save_every", 50)
        set_option(page, "train.batch_size", 4)
        set_option(page, "data.eval_split", 0.2)  # 4 of the 20 records measure an eval loss every 25 steps
        page.get_by_text("train: more options").click()
        set_option(page, "train.eval_every", 25)
        command = page.locator("#command-preview textarea")
        expect(command).to_have_value(re.compile(r"^loratune --home .* train --name ui-run --model tiny "))
        expect(command).to_have_value(re.compile(r"--train.max_steps 100000 .*--train.eval_every 25"))
        page.get_by_role("button", name="Start training").click()
        status = page.locator("#job-status")
        expect(status).to_contain_text("running", timeout=WAIT_MS)
        expect(status).to_contain_text("loss", timeout=WAIT_MS)  # metrics.jsonl rows arrive
        expect(status).to_contain_text("eval loss", timeout=WAIT_MS)
        expect(status).to_contain_text(re.compile(r"step \d+ / 100000"))
        bar = page.locator("#job-progress .job-progress")
        first = int(bar.get_attribute("data-step"))
        assert bar.get_attribute("data-total") == "100000"
        expect(page.locator("#job-progress")).to_contain_text("tokens/s")
        expect(page.locator("#job-progress")).to_contain_text("ETA")
        expect(bar).not_to_have_attribute("data-step", str(first), timeout=WAIT_MS)  # the bar advances
        assert int(bar.get_attribute("data-step")) > first and shown_step(page) > first
        # The log follows its end: scrolled to the bottom once it holds more lines than it shows.
        log = page.locator("#job-log textarea")
        page.wait_for_function(
            "() => { const b = document.querySelector('#job-log textarea');"
            " return b && b.scrollHeight > b.clientHeight + 20"
            " && b.scrollTop + b.clientHeight >= b.scrollHeight - 4; }",
            timeout=WAIT_MS,
        )
        assert log.input_value().splitlines()[-1].strip()
        page.screenshot(path=shots / "2-training.png", full_page=True)

        # Reload the page: the job, its history and its options are still there.
        page.reload()
        page.get_by_role("tab", name="Train").click()
        expect(status).to_contain_text("ui-run", timeout=WAIT_MS)
        expect(status).to_contain_text("running")
        expect(status).to_contain_text("loss", timeout=WAIT_MS)
        assert shown_step(page) >= first
        expect(option(page, "name")).to_have_value("ui-run")
        expect(option(page, "train.max_steps")).to_have_value("100000")
        expect(option(page, "data.eval_split")).to_have_value("0.2")
        page.get_by_text("train: more options").click()
        expect(option(page, "train.eval_every")).to_have_value("25")

        # Restart the UI itself: the job runs on, and the new UI finds it.
        server.stop()
        server.start()
        open_ui(page, server.url)
        page.get_by_role("tab", name="Train").click()
        expect(status).to_contain_text("ui-run", timeout=WAIT_MS)
        expect(status).to_contain_text("running")
        set_option(page, "train.max_steps", 7)
        page.get_by_role("button", name="Load options from this run").click()  # the run's options fill the form
        expect(option(page, "model.source")).to_have_value("tiny")
        expect(option(page, "train.max_steps")).to_have_value("100000")
        page.screenshot(path=shots / "3-after-ui-restart.png", full_page=True)

        # Stop: the job ends and a complete checkpoint is on disk.
        expect(status).to_contain_text("loss", timeout=WAIT_MS)
        page.get_by_role("button", name="Stop (saves a checkpoint)").click()
        expect(status).to_contain_text("stopped", timeout=WAIT_MS)
        expect(status).to_contain_text("exit code 0")  # a graceful stop: step finished, checkpoint written
        checkpoints = sorted(p.name for p in run_dir.glob("checkpoint-*") if (p / "COMPLETE").is_file())
        assert checkpoints, f"no complete checkpoint in {run_dir}"
        stopped_at = int(checkpoints[-1].split("-")[1])
        assert shown_step(page) == stopped_at  # the stop saved the step it finished

        # Resume: the run continues from that checkpoint; stop it again.
        page.get_by_role("button", name="Resume").click()
        expect(status).to_contain_text("running", timeout=WAIT_MS)
        expect(status).not_to_contain_text(f"step {stopped_at} ", timeout=WAIT_MS)
        assert shown_step(page) > stopped_at
        page.get_by_role("button", name="Stop (saves a checkpoint)").click()
        expect(status).to_contain_text("stopped", timeout=WAIT_MS)
        expect(status).to_contain_text("exit code 0")
        checkpoints = sorted(p.name for p in run_dir.glob("checkpoint-*") if (p / "COMPLETE").is_file())
        assert int(checkpoints[-1].split("-")[1]) > stopped_at

        # LoRAs: the checkpoint is listed with its loss; send it to Generate.
        page.get_by_role("tab", name="LoRAs").click()
        page.get_by_role("button", name="↻ Refresh").click()
        expect(page.locator("#loras-table")).to_contain_text("ui-run", timeout=WAIT_MS)
        choose(page, "Adapter or checkpoint", f"ui-run/{checkpoints[0]}")
        page.get_by_role("button", name="Promote checkpoint to the run's adapter").click()
        expect(page.locator("#loras-result")).to_contain_text(f"now holds the adapter of {checkpoints[0]}")
        assert json.loads((run_dir / "promoted.json").read_text())["checkpoint"] == checkpoints[0]
        choose(page, "Adapter or checkpoint", "ui-run")
        page.get_by_role("button", name="Export GGUF (llama.cpp --lora)").click()
        expect(page.locator("#loras-result")).to_contain_text("adapter.gguf", timeout=WAIT_MS)
        assert (run_dir / "adapter.gguf").stat().st_size > 0
        # The run stays chosen and its new export is offered: the file, served from a copy outside loras/.
        choose(
            page,
            "Download (the adapter, or a file its exports wrote)",
            "adapter.gguf (GGUF adapter for llama.cpp --lora)",
        )
        expect(page.locator("#download-button")).to_contain_text("Download adapter.gguf", timeout=WAIT_MS)
        with page.expect_download() as got:
            page.locator("#download-button").click()
        assert Path(got.value.path()).read_bytes() == (run_dir / "adapter.gguf").read_bytes()
        choose(page, "Adapter or checkpoint", f"ui-run/{checkpoints[0]}")
        page.get_by_role("button", name="Delete", exact=True).click()  # not confirmed: refused
        expect(page.get_by_text("tick the box to confirm").first).to_be_visible()
        assert (run_dir / checkpoints[0]).is_dir()
        page.get_by_label("Yes, delete it (a run name deletes the whole run folder)").check()
        page.get_by_role("button", name="Delete", exact=True).click()
        expect(page.locator("#loras-result")).to_contain_text("Deleted", timeout=WAIT_MS)
        assert not (run_dir / checkpoints[0]).exists()
        choose(page, "Adapter or checkpoint", f"ui-run/{checkpoints[-1]}")
        page.screenshot(path=shots / "4-loras.png", full_page=True)
        page.get_by_role("button", name="Use in Generate").click()

        # Generate: the base model, the checkpoint and two more LoRAs side by side, all on one loaded base model;
        # a two-turn conversation, each answer streamed in pieces.
        expect(page.get_by_label("Message", exact=True)).to_be_visible()
        for lora in ("lora-a", "lora-b"):
            choose(page, "LoRAs", lora)
        page.keyboard.press("Escape")  # a multiselect stays open after a pick
        page.get_by_text("Sampling options").click()
        set_option(page, "max_new_tokens", 48)
        page.evaluate(
            "() => { window.seen = []; const a = document.querySelector('#answers');"
            " new MutationObserver(() => { const t = a.querySelector('.answer-text');"
            " if (t) window.seen.push(t.textContent); }).observe(a, {childList: true, subtree: true,"
            " characterData: true}); }"
        )
        answers = page.locator("#answers")
        for turn, message in enumerate(["What is 2 plus 3?", "And 4 plus 1?"], start=1):
            page.get_by_label("Message", exact=True).fill(message)
            page.get_by_role("button", name="Send", exact=True).click()
            expect(answers.locator(".answer")).to_have_count(4, timeout=WAIT_MS)
            expect(answers.locator(".answer").last.locator(".answer-text")).to_have_count(turn, timeout=WAIT_MS)
            expect(page.get_by_label("Message", exact=True)).to_have_value("")
        titles = answers.locator(".answer-title").all_inner_texts()
        assert [t.split(" · ")[0] for t in titles] == ["base model", f"ui-run/{checkpoints[-1]}", "lora-a", "lora-b"]
        assert len(answers.locator(".chat-user").all()) == 8  # each column shows both of the user's messages
        page.wait_for_timeout(500)  # the last redraw
        first_answer = answers.locator(".answer-text").first.inner_text()
        seen = page.evaluate("window.seen")
        partial = [t for t in seen if t and t != first_answer and first_answer.startswith(t)]
        assert partial, f"no streamed piece before the whole answer {first_answer!r}: {seen[:5]}"
        page.screenshot(path=shots / "5-generate.png", full_page=True)
    except BaseException:
        page.screenshot(path=shots / "failure.png", full_page=True)
        print(f"screenshots in {shots}; UI log:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
        raise
    finally:
        server.stop()
        _stop_leftover_job(ui_home)


@pytest.mark.long
def test_start_on_a_finished_run_is_refused_in_chromium(ui_home, browser_page, tmp_path):
    """Issue 15.2, where it was seen: Start on a finished run's name spawned a job that failed 15 s later, having
    emptied that run's train.log and marked it failed. Now one message, and the run and its record stay as they were."""
    from playwright.sync_api import expect

    page = browser_page
    server = Server(ui_home, tmp_path / "ui.log")
    server.start()
    record, run_dir = ui_home / "loras" / ".jobs" / "done", ui_home / "loras" / "done"
    try:
        open_ui(page, server.url)
        page.get_by_role("tab", name="Train").click()
        for name, value in [("model.source", "tiny"), ("data.path", "sums.jsonl"), ("name", "done")]:
            set_option(page, name, value)
        set_option(page, "train.max_steps", 2)
        set_option(page, "train.batch_size", 4)
        page.get_by_role("button", name="Start training").click()
        status = page.locator("#job-status")
        expect(status).to_contain_text("finished (exit code 0)", timeout=WAIT_MS)
        finished_record, finished_run = files_in(record), files_in(run_dir)
        assert b"adapter saved in" in finished_record["train.log"]

        page.get_by_role("button", name="Start training").click()  # the same name again, overwrite not ticked
        expect(page.get_by_text("'done' already holds a finished run (step 2)").first).to_be_visible()
        page.get_by_role("button", name="Resume").click()
        expect(page.get_by_text("'done' already finished at step 2: nothing to resume").first).to_be_visible()
        expect(status).to_contain_text("finished (exit code 0)")
        assert files_in(record) == finished_record and files_in(run_dir) == finished_run
    except BaseException:
        page.screenshot(path=tmp_path / "failure.png", full_page=True)
        print(f"screenshot in {tmp_path}; UI log:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
        raise
    finally:
        server.stop()
        _stop_leftover_job(ui_home)


def _stop_leftover_job(home: Path) -> None:
    """If the test failed mid-run, do not leave the training job running."""
    from loratune import jobs

    ws = Workspace.resolve(home)
    for name in jobs.job_names(ws):
        state = jobs.status(ws, name)
        if state is not None and state.active and state.pid:
            try:
                os.kill(state.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------- downloads of an adapter and its exports


def trained_run(home: Path, name: str = "done") -> Path:
    """A real 2-step run on the tiny model in models/tiny (adapter, prompt.json and tokenizer files)."""
    from loratune import train

    ws = Workspace.resolve(home)
    fast = {"model": str(ws.models / "tiny"), "data": str(ws.datasets / "sums.jsonl"), "adapter.rank": 4}
    fast |= {"train.batch_size": 4, "train.micro_batch": 4, "train.max_steps": 2, "train.save_every": 1}
    train(home=home, name=name, show_progress=False, **fast)
    return ws.lora_dir(name)


def test_downloads_list_exports_and_stage_complete_copies(ui_home, tmp_path):
    """The adapter, its GGUF file, its Ollama folder and its merged model are listed from the server's disk; each is
    staged outside the workspace (a link, or a zip renamed into place), reused while unchanged, replaced when not."""
    import zipfile

    from loratune.adapters import merge
    from loratune.ui import downloads

    ws = Workspace.resolve(ui_home)
    run = trained_run(ui_home)
    merge("done", "done-merged", ws)
    merge("done/checkpoint-000001", "from-checkpoint", ws)  # another adapter's merge: not listed for "done"
    (run / "adapter.gguf").write_bytes(b"GGUF stand-in")  # listed by name; its bytes are not read
    (run / "ollama").mkdir()
    (run / "ollama" / "Modelfile").write_text("FROM base.gguf\nADAPTER adapter.gguf\n")
    (run / ".adapter.gguf.tmp-1").write_bytes(b"a temporary of a dead writer")  # hidden: never offered
    (tmp_path / "secret.txt").write_text("not yours")
    (run / "leak.gguf").symlink_to(tmp_path / "secret.txt")  # a link out of the run folder: never offered
    (ws.models / "done-merged" / "leak.txt").symlink_to(tmp_path / "secret.txt")

    found = {e.key: e for e in downloads.exports(ws, "done")}
    assert list(found) == ["adapter", "gguf:adapter.gguf", "ollama:ollama", "merged:done-merged"]
    adapter = found["adapter"]
    assert {"adapter_model.safetensors", "adapter_config.json", "prompt.json", "tokenizer.json"} <= set(adapter.members)
    for bad in ("../x", "done/../../x", "/etc", "done/checkpoint-000001/../.."):
        with pytest.raises(LoratuneError):
            downloads.exports(ws, bad)
    with pytest.raises(LoratuneError, match="no export"):
        downloads.find(ws, "done", "gguf:../../secret.txt")  # keys are looked up, never used as paths

    before = files_in(ui_home)
    stage = tmp_path / "gradio-uploads"
    zipped = downloads.stage(found["merged:done-merged"], stage)
    assert zipped.name == "done-merged.zip" and stage in zipped.parents
    with zipfile.ZipFile(zipped) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
    merged_files = sorted(
        p.relative_to(ws.models / "done-merged").as_posix() for p in (ws.models / "done-merged").rglob("*")
    )
    assert sorted(n.removeprefix("done-merged/") for n in names) == [f for f in merged_files if f != "leak.txt"]
    assert "done-merged/model.safetensors" in names and "done-merged/MERGED_FROM.txt" in names
    linked = downloads.stage(found["gguf:adapter.gguf"], stage)
    assert linked.read_bytes() == b"GGUF stand-in"
    assert files_in(ui_home) == before  # staging writes nothing into the workspace
    assert not [p for p in stage.rglob(".*")]  # no temporary left beside the copies
    assert (stage / "loratune-downloads").stat().st_mode & 0o077 == 0  # the upload folder is shared; ours is not

    assert downloads.stage(found["merged:done-merged"], stage) == zipped  # unchanged: the same copy
    (ws.models / "done-merged" / "MERGED_FROM.txt").write_text("base: x\nadapter: changed\n")
    renewed = downloads.stage(found["merged:done-merged"], stage)
    assert renewed != zipped and not zipped.exists()  # the older copy of that source is gone
    assert "done-merged" not in {e.key.partition(":")[2] for e in downloads.exports(ws, "done")}  # not from it now


def test_download_buttons_in_chromium(ui_home, browser_page, tmp_path):
    """Issue 21: a trained adapter and its merge downloaded as zips through the LoRAs tab's Download button; the
    workspace itself is not served. The merge runs here, as the tab's Merge button runs it (adapters.merge): in the UI
    it would first import torch there (~15 s on 2 loaded cores); the journey test exports through the tab."""
    import zipfile

    from playwright.sync_api import expect

    from loratune.adapters import merge

    run = trained_run(ui_home)
    merge("done", "done-merged", ui_home)
    page = browser_page
    server = Server(ui_home, tmp_path / "ui.log")
    server.start()
    picker = "Download (the adapter, or a file its exports wrote)"
    try:
        open_ui(page, server.url)
        page.get_by_role("tab", name="LoRAs").click()
        choose(page, "Adapter or checkpoint", "done")
        button = page.locator("#download-button")

        def download(entry: str, filename: str) -> list[str]:
            choose(page, picker, entry)
            expect(button).to_contain_text(f"Download {filename}", timeout=WAIT_MS)
            with page.expect_download() as got:
                button.click()
            assert got.value.suggested_filename == filename
            saved = tmp_path / filename
            got.value.save_as(saved)
            with zipfile.ZipFile(saved) as archive:
                assert archive.testzip() is None
                return archive.namelist()

        merged = ui_home / "models" / "done-merged"
        names = download("models/done-merged/ (merged model, as a zip)", "done-merged.zip")
        assert sorted(names) == sorted(f"done-merged/{p.name}" for p in merged.iterdir() if p.is_file())
        assert {"done-merged/model.safetensors", "done-merged/config.json", "done-merged/tokenizer.json"} <= set(names)
        names = download("the adapter (zip: weights, config, tokenizer)", "done.zip")
        assert {f"done/{n}" for n in ("adapter_model.safetensors", "adapter_config.json", "prompt.json")} <= set(names)
        assert "done/tokenizer.json" in names and not [n for n in names if "checkpoint-" in n]
        assert not [p for p in [*run.rglob(".*"), *merged.rglob(".*")] if p.name != ".lock"]  # no zip in progress

        cookies = {c["name"]: c["value"] for c in page.context.cookies()}  # logged in, yet no workspace path served
        weights = requests.get(f"{server.url}gradio_api/file={run / 'adapter_model.safetensors'}", cookies=cookies)
        assert weights.status_code == 403
    except BaseException:
        page.screenshot(path=tmp_path / "failure.png", full_page=True)
        print(f"screenshot in {tmp_path}; UI log:\n{(tmp_path / 'ui.log').read_text()[-3000:]}")
        raise
    finally:
        server.stop()

"""medqa.serve: the Gradio demo (API via gradio_client, queue under load, a real browser). Spaces export:
test_ship_space.py."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
from test_predict import EXPLANATION, OPTIONS, QUESTION, Script

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from medqa import predict as predict_mod  # noqa: E402
from medqa import serve  # noqa: E402
from medqa.config import ModelConfig  # noqa: E402
from medqa.errors import ConfigError  # noqa: E402
from medqa.evaluate import DISCLAIMER  # noqa: E402
from medqa.inference import Answerer  # noqa: E402
from medqa.modeling import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
TIMEOUT = 120  # no request may hang longer than this
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside gradio's queue (pandas 3)
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(url: str):
    return gradio_client.Client(url, verbose=False, analytics_enabled=False, download_files=False)


def start(demo) -> str:
    port = free_port()
    serve.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def tiny(qwen_dir):
    return load_model(ModelConfig(name=str(qwen_dir), device="cpu"))


@pytest.fixture(scope="module")
def served(qwen_dir):
    """The demo on 127.0.0.1 with a scripted tiny model: letter A wins, a known explanation streams."""
    model, tok = load_model(ModelConfig(name=str(qwen_dir), device="cpu"))
    script = Script(model, tok)
    demo = serve.build_demo(model, tok, threshold=0.5, max_new_tokens=64, model_name="tiny-qwen3 (scripted)",
                            queue_size=32, concurrency=1)
    url = start(demo)
    yield demo, url
    demo.close()
    script.remove()


# ----------------------------------------------------------------------------- rendering


def _pred(**kw):
    base = dict(question="Q?", options=["<b>bold</b>", "x & y"], letter="A", index=0, option="<b>bold</b>",
                probabilities={"A": 0.3, "B": 0.7}, confidence=0.3, threshold=0.5, low_confidence=True,
                abstention=predict_mod.abstention_message("A", 0.3, 0.5), explanation="", done=True,
                seconds_to_letter=0.1, seconds_to_first_token=0.2, seconds_total=0.3)
    base.update(kw)
    return predict_mod.Prediction(**base)


def test_card_escapes_user_text_and_shows_every_option():
    evil = '<img src=x onerror="alert(1)">'
    html = serve.render_card(_pred(options=[evil, "x & y"], option=evil))
    assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "x &amp; y" in html
    assert html.count('class="mq-row') == 2 and 'style="width: 30.0%"' in html and 'style="width: 70.0%"' in html
    assert "Low confidence: 30%" in html and 'role="alert"' in html and "abstains" in html
    assert DISCLAIMER in html
    confident = serve.render_card(_pred(low_confidence=False, abstention=None, confidence=0.9,
                                        probabilities={"A": 0.9, "B": 0.1}))
    assert "High confidence: 90%" in confident and "mq-abstain" not in confident


def test_examples_come_from_the_demo_set():
    rows, labels = serve.example_rows(n=6)
    assert len(rows) == len(labels) == 6
    for row in rows:
        assert len(row) == 7 and 2 <= row[1] <= 5 and all(row[2 : 2 + row[1]])
    assert len({label.split(":")[0] for label in labels}) > 1  # several subjects


def test_build_demo_queue_and_endpoints(tiny):
    demo = serve.build_demo(*tiny, queue_size=7, concurrency=2)
    assert demo._queue.max_size == 7
    names = {fn.api_name for fn in demo.fns.values()}
    assert {"ask", "answer"} <= names
    with pytest.raises(ConfigError):
        serve.build_demo(*tiny, threshold=2.0)


# ----------------------------------------------------------------------------- API (gradio_client)


def test_binds_loopback_without_share_link(served):
    demo, url = served
    assert demo.server_name == "127.0.0.1" and not demo.share and demo.share_url is None
    ip = None
    try:
        ip = next(a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
                  if not a[4][0].startswith("127."))
    except (StopIteration, OSError):
        pass
    if ip:
        with pytest.raises(OSError), socket.create_connection((ip, demo.server_port), timeout=3):
            pass


def test_client_answer_endpoint(served):
    _, url = served
    r = client(url).predict(QUESTION, OPTIONS, api_name="/answer")
    assert r["letter"] == "A" and r["answer"] == OPTIONS[0]
    assert set(r["probabilities"]) == set("ABCD") and abs(sum(r["probabilities"].values()) - 1) < 1e-4
    assert r["explanation"] == EXPLANATION and r["stop_reason"] == "end_of_turn"
    assert r["low_confidence"] is False and r["disclaimer"] == DISCLAIMER
    r = client(url).predict(QUESTION, OPTIONS[:2], False, api_name="/answer")
    assert r["explanation"] is None and len(r["probabilities"]) == 2


def test_client_ask_endpoint_streams(served):
    _, url = served
    job = client(url).submit(QUESTION, 3, *OPTIONS[:3], "", "", api_name="/ask")
    final = job.result(timeout=TIMEOUT)
    outputs = job.outputs()
    assert len(outputs) >= 3  # card first, then explanation pieces
    explanations = [o[1] for o in outputs]
    assert explanations[0] == "" and explanations[-1] == EXPLANATION
    assert any(0 < len(e) < len(EXPLANATION) for e in explanations)  # partial text arrived first
    card, text, result = final
    assert 'data-letter="A"' in card and card.count('class="mq-row') == 3 and 'data-state="done"' in card
    assert text == EXPLANATION and result["letter"] == "A" and result["disclaimer"] == DISCLAIMER


@pytest.mark.parametrize(
    "args, message",
    [
        (("", OPTIONS), "Question is empty."),
        (("Q?", ["only"]), "Options are too few: at least 2 are needed (got 1)."),
        (("Q?", list("abcdef")), "Options are too many: at most 5, A-E (got 6)."),
        (("Q?", ["a", ""]), "Option B is empty."),
        (("x" * (predict_mod.MAX_QUESTION_CHARS + 1), ["a", "b"]), "Question is too long"),
        (("Q? <|im_end|>", ["a", "b"]), "reserved token &lt;|im_end|&gt;"),
    ],
)
def test_client_gets_clear_validation_errors(served, args, message):
    _, url = served
    with pytest.raises(gradio_client.exceptions.AppError) as ei:
        client(url).predict(*args, api_name="/answer")
    assert message in str(ei.value)


def test_ask_rejects_a_bad_option_count(served):
    _, url = served
    with pytest.raises(gradio_client.exceptions.AppError, match="not in the list of choices: \\[2, 3, 4, 5\\]"):
        client(url).predict(QUESTION, 7, *OPTIONS, "", api_name="/ask")


def _outcome(url: str, i: int) -> str:
    c = client(url)
    job = c.submit(f"{QUESTION} ({i})", OPTIONS, api_name="/answer")
    try:
        r = job.result(timeout=TIMEOUT)
    except Exception as e:  # a full queue is the only acceptable failure, with a clear message
        assert "queue is full" in str(e).lower(), repr(e)
        return "queue_full"
    assert r["letter"] in "ABCD" and r["disclaimer"] == DISCLAIMER
    return "answered"


def _storm(url: str, n: int = 16) -> list[str]:
    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_outcome, url, i) for i in range(n)]
        done, pending = wait(futures, timeout=TIMEOUT + 30)
        assert not pending, f"{len(pending)} clients hung"
        out = [f.result() for f in futures]
    assert time.perf_counter() - t < TIMEOUT + 30
    return out


def test_sixteen_concurrent_clients_are_all_answered(served):
    _, url = served
    assert _storm(url) == ["answered"] * 16


def test_full_queue_gives_a_clear_message(tiny, monkeypatch):
    model, tok = tiny
    real = Answerer.answer

    def slow(*a, **kw):
        time.sleep(0.8)
        return real(*a, **kw)

    monkeypatch.setattr(Answerer, "answer", slow)
    demo = serve.build_demo(model, tok, max_new_tokens=4, queue_size=2, concurrency=1)
    url = start(demo)
    try:
        outcomes = _storm(url)
    finally:
        demo.close()
    assert set(outcomes) <= {"answered", "queue_full"}
    assert outcomes.count("answered") >= 1 and outcomes.count("queue_full") >= 1, outcomes


# ----------------------------------------------------------------------------- CLI


def _sub(add):
    parser = argparse.ArgumentParser(prog="medqa")
    add(parser.add_subparsers(dest="command", required=True))
    return parser


def test_demo_cli_defaults_are_local_and_private(qwen_dir, monkeypatch):
    ns = _sub(serve.add_demo_parser).parse_args(["demo", "--model", str(qwen_dir), "--device", "cpu"])
    assert (ns.host, ns.port, ns.share, ns.threshold) == ("127.0.0.1", 7860, False, None)  # None: calibrated, else 0.5
    seen = {}
    monkeypatch.setattr(serve, "launch", lambda demo, **kw: seen.update(kw, demo=demo))
    assert ns.handler(ns) == 0
    assert seen["host"] == "127.0.0.1" and seen["share"] is False and seen["port"] == 7860
    assert seen["demo"]._queue.max_size == serve.DEFAULT_QUEUE_SIZE


# ----------------------------------------------------------------------------- a real browser


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium_page(timeout_ms: int = 60_000):
    """(page, expect) in a headless Debian Chromium driven by Playwright; skips when either is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    exe = _chromium()
    if exe is None:
        pytest.skip("Debian chromium not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(timeout_ms)
            yield page, sync_api.expect
        finally:
            browser.close()


@pytest.mark.slow
def test_browser_example_answer_and_inert_rendering(served):
    _, url = served
    rows, labels = serve.example_rows()
    with chromium_page() as (page, expect):
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator("#mq-disclaimer")).to_contain_text("not medical advice")
        expect(page.locator("#mq-disclaimer")).to_be_visible()

        # an example fills the question and options
        page.get_by_text(labels[0]).first.click()
        expect(page.locator("#question textarea")).to_have_value(rows[0][0])
        expect(page.locator("#option-a textarea, #option-a input").first).to_have_value(rows[0][2])

        page.get_by_role("button", name="Answer", exact=True).click()
        card = page.locator("#answer-card .mq-card")
        expect(card).to_have_attribute("data-state", "done")
        expect(page.locator("#answer-card .mq-letter")).to_have_text("A")
        expect(page.locator("#answer-card .mq-answer")).to_have_text(rows[0][2])
        expect(page.locator("#answer-card .mq-row")).to_have_count(4)
        widths = page.locator("#answer-card .mq-fill").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
        assert len(widths) == 4 and widths[0] > widths[1] > 0
        expect(page.locator("#answer-card .mq-badge")).to_contain_text("confidence")
        expect(page.locator("#explanation textarea")).to_have_value(EXPLANATION)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

        # fewer options: the hidden boxes go away
        page.locator("#n-options").get_by_text("2", exact=True).click()
        expect(page.locator("#option-c")).to_be_hidden()
        expect(page.locator("#option-b")).to_be_visible()

        # user text is shown, never executed
        evil = '<img id="pwned" src="x" onerror="window.__pwned = 1">'
        page.locator("#option-a textarea, #option-a input").first.fill(evil)
        page.get_by_role("button", name="Answer", exact=True).click()
        expect(page.locator("#answer-card .mq-answer")).to_have_text(evil)
        expect(page.locator("#answer-card .mq-row")).to_have_count(2)
        expect(card).to_have_attribute("data-state", "done")
        assert page.locator("#pwned").count() == 0
        assert page.evaluate("window.__pwned") is None

        # a clear message for bad input
        page.locator("#question textarea").fill("")
        page.get_by_role("button", name="Answer", exact=True).click()
        expect(page.get_by_text("Question is empty.")).to_be_visible()
    assert (ARTIFACTS / "demo.png").stat().st_size > 10_000


def test_importing_the_cli_modules_stays_light():
    code = ("import sys, medqa.predict, medqa.serve; "
            "print(sorted(m for m in ('torch', 'gradio', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- load and security


@pytest.mark.slow
def test_load_two_hundred_requests_from_sixteen_clients_with_bad_ones(qwen_dir):
    """`medqa demo` in its own process; 16 clients send 200 requests over loopback, one in four of them
    oversized (1 MB question) or malformed. Every request gets an answer or a clear refusal, none hangs,
    the server's memory stays bounded, and it keeps serving afterwards."""
    import psutil

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "medqa.cli", "demo", "--model", str(qwen_dir), "--port", str(port),
                               "--max-new-tokens", "8", "--queue-size", "64", "--device", "cpu"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        import urllib.request

        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                time.sleep(0.5)
        proc = psutil.Process(server.pid)
        c = client(url)
        for _ in range(3):  # warm up, then take the baseline
            c.predict(QUESTION, OPTIONS, api_name="/answer")
        base = proc.memory_info().rss
        peak = [base]
        stop = False

        def sample():
            while not stop:
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.05)

        def request(cl, i: int) -> str:
            kind = ("oversized", "malformed", "ok", "ok")[i % 4]
            if kind == "oversized":
                args = ("x" * 1_000_000, OPTIONS)
            elif kind == "malformed":
                args = [("", OPTIONS), ("Q?", ["only"]), ("Q?", ["a", "a"]), ("Q?", ["a", "y" * 5000])][(i // 4) % 4]
            else:
                args = (f"{QUESTION} ({i})", OPTIONS)
            job = cl.submit(*args, api_name="/answer")
            try:
                r = job.result(timeout=TIMEOUT)
            except gradio_client.exceptions.AppError as e:
                assert kind != "ok", repr(e)
                assert any(m in str(e) for m in ("too long", "empty", "too few", "the same as")), repr(e)
                return "refused"
            assert kind == "ok" and r["letter"] in "ABCD" and r["disclaimer"] == DISCLAIMER
            return "answered"

        def worker(w: int) -> list[str]:
            cl = client(url)
            return [request(cl, i) for i in range(w, 200, 16)]

        sampler = ThreadPoolExecutor(1)
        sampler.submit(sample)
        t = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(worker, w) for w in range(16)]
            done, pending = wait(futures, timeout=600)
            assert not pending, f"{len(pending)} clients hung"
            outcomes = [o for f in futures for o in f.result()]
        seconds = time.perf_counter() - t
        stop = True
        sampler.shutdown()
        assert len(outcomes) == 200
        assert outcomes.count("answered") == 100 and outcomes.count("refused") == 100
        grown = (peak[0] - base) / 2**20
        assert grown < 300, f"server memory grew by {grown:.0f} MiB under load"
        r = client(url).predict(QUESTION, OPTIONS, api_name="/answer")  # still serving
        assert r["letter"] in "ABCD"
        assert server.poll() is None
        print(f"\n200 requests from 16 clients in {seconds:.1f} s; server RSS +{grown:.0f} MiB at peak")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_files_outside_the_app_cannot_be_fetched(served):
    """Paths from requests cannot escape: the file routes refuse system files and traversal."""
    import urllib.error
    import urllib.request

    _, url = served
    import tempfile

    secret = Path(tempfile.gettempdir()) / "medqa-secret-probe.txt"
    secret.write_text("root:secret")
    try:
        for path in (f"gradio_api/file={secret}", "gradio_api/file=/etc/passwd",
                     "gradio_api/file=../../../../etc/passwd", "file=/etc/passwd",
                     "gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", f"static/../../../..{secret}"):
            try:
                with urllib.request.urlopen(url + path, timeout=10) as resp:
                    body = resp.read().decode(errors="replace")
                    assert "root:" not in body, path
            except urllib.error.HTTPError as e:
                assert e.code in (400, 403, 404, 405), (path, e.code)
    finally:
        secret.unlink()


# ----------------------------------------------------------------------------- the adapter's base, protocol, calibration

from test_predict import ABSTAIN_ALL_CAL, THRESHOLD_CAL, make_adapter  # noqa: E402


def _endpoint(demo, name):
    return next(f.fn for f in demo.fns.values() if f.api_name == name)


def _first_card(demo) -> str:
    gen = _endpoint(demo, "ask")(QUESTION, 4, *OPTIONS, "")
    try:
        return next(gen)[0]
    finally:
        gen.close()


@pytest.fixture(scope="module")
def lm_eval_adapter(qwen_dir, tmp_path_factory):
    return make_adapter(qwen_dir, tmp_path_factory.mktemp("serve-adapter") / "adapter", protocol="lm-eval",
                        calibration=THRESHOLD_CAL)


def test_demo_cli_adapter_alone_uses_its_base_protocol_and_calibration(lm_eval_adapter, monkeypatch):
    """Issue 4: `medqa demo --adapter DIR` loads the adapter's base (not SmolLM2) and serves with its protocol."""
    ns = _sub(serve.add_demo_parser).parse_args(["demo", "--adapter", str(lm_eval_adapter), "--device", "cpu"])
    seen = {}
    monkeypatch.setattr(serve, "launch", lambda demo, **kw: seen.update(kw, demo=demo))
    assert ns.handler(ns) == 0
    result = _endpoint(seen["demo"], "answer")(QUESTION, OPTIONS, False)
    assert result["protocol"] == "lm-eval" and result["threshold"] == 0.3
    assert result["guarantee"]["n"] == 200


def test_demo_builder_uses_the_adapters_protocol(lm_eval_adapter):
    model, tok = load_model(ModelConfig(adapter=str(lm_eval_adapter), device="cpu"))
    assert model.config.model_type == "qwen3"
    demo = serve.build_demo(model, tok)
    assert _endpoint(demo, "answer")(QUESTION, OPTIONS, False)["protocol"] == "lm-eval"
    demo = serve.build_demo(model, tok, protocol="chat")
    assert _endpoint(demo, "answer")(QUESTION, OPTIONS, False)["protocol"] == "chat"


def test_demo_card_flags_everything_when_the_calibration_says_abstain_all(tiny, monkeypatch):
    """Issue 12: the demo applies calibrate.abstains: abstain_all flags a confident answer, and says why."""
    model, tok = tiny
    script = Script(model, tok)
    try:
        monkeypatch.setattr(model, "medqa_calibration", ABSTAIN_ALL_CAL, raising=False)
        card = _first_card(serve.build_demo(model, tok, max_new_tokens=4))
        assert 'data-level="low"' in card and "Low confidence: 79%" in card and 'role="alert"' in card
        assert "every answer" in card
        monkeypatch.setattr(model, "medqa_calibration", THRESHOLD_CAL, raising=False)
        card = _first_card(serve.build_demo(model, tok, max_new_tokens=4))
        assert 'data-level="low"' not in card and "mq-abstain" not in card
    finally:
        script.remove()


def test_demo_card_and_page_show_the_guarantee(tiny, monkeypatch):
    import html as html_mod

    from medqa.calibrate import guarantee_text

    model, tok = tiny
    monkeypatch.setattr(model, "medqa_calibration", THRESHOLD_CAL, raising=False)
    demo = serve.build_demo(model, tok, max_new_tokens=4)
    sentence = html_mod.escape(guarantee_text(THRESHOLD_CAL), quote=True)
    card = _first_card(demo)
    assert sentence in card
    page = " ".join(str(getattr(b, "value", "")) for b in demo.blocks.values())
    assert "30%" in page and html_mod.escape(guarantee_text(THRESHOLD_CAL), quote=True) in page


# ----------------------------------------------------------------------------- thinking mode (issue 17.2)

REASONED = "<think>\nThe deltoid: C5-C6 <via> the posterior cord.\n</think>\n\nAnswer: B"


def _thinking_pred(**kw):
    info = {"status": "done", "letter": "B", "reasoning": "Step <1> & step 2", "final_line": "Answer: B",
            "well_formed": True, "scored_letter": "A", "scored_confidence": 0.7, "agrees": False, "tokens": 42,
            "cut_off": False, "note": "The reasoning answered B but letter scoring prefers A (70%): they disagree."}
    info.update(kw.pop("thinking", {}))
    return _pred(letter="B", index=1, option="x & y", confidence=0.3, thinking=info, **kw)


def test_thinking_card_shows_the_reasoning_collapsed_under_the_answer():
    card = serve.render_card(_thinking_pred())
    assert 'data-mode="thinking"' in card and 'data-letter="B"' in card
    details = card[card.index("<details"):card.index("</details>")]
    assert "<details " in card and " open" not in details.split(">", 1)[0]  # collapsed
    assert "Step &lt;1&gt; &amp; step 2" in details and "Final line: Answer: B" in details
    assert "Reasoning (42 tokens; may be wrong)" in details
    head_end = card.index("</div>", card.index('class="mq-head"'))
    assert head_end < card.index("<details") < card.index('class="mq-probs"')  # under the answer, above the bars
    assert 'data-agrees="false"' in card and "they disagree" in card
    assert "Low confidence: 30%" in card and 'role="alert"' in card and DISCLAIMER in card
    assert "Letter scoring (one forward pass on the question, calibrated)" in card
    cut = serve.render_card(_thinking_pred(thinking={"cut_off": True, "letter": None, "agrees": None}))
    assert "cut off at the token limit" in cut and 'data-agrees="none"' in cut
    pending = serve.render_card(_thinking_pred(done=False, thinking={"status": "reasoning"}))
    assert "<details" not in pending and "is reasoning" in pending and "reasoning…" in pending
    assert "<details" not in serve.render_card(_pred())  # letter scoring alone: no reasoning block


def test_thinking_demo_streams_into_a_closed_accordion_and_ends_with_the_reasoning_card(tiny):
    model, tok = tiny
    script = Script(model, tok, explanation=REASONED)
    try:
        demo = serve.build_demo(model, tok, threshold=0.5, thinking=True)
        accordions = [b for b in demo.blocks.values() if isinstance(b, gr.Accordion)]
        stream = next(a for a in accordions if a.elem_id == "reasoning-stream")
        assert stream.open is False
        box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "explanation")
        assert box.parent is stream or box.parent.parent is stream
        page = " ".join(str(getattr(b, "value", "")) for b in demo.blocks.values())
        assert "Thinking mode: the model reasons first (up to 1024 tokens)" in page
        outs = list(_endpoint(demo, "ask")(QUESTION, 4, *OPTIONS, ""))
        result = _endpoint(demo, "answer")(QUESTION, OPTIONS, True)
    finally:
        script.remove()
    first_card, final_card, final = outs[0][0], outs[-1][0], outs[-1][2]
    assert "is reasoning" in first_card and "<details" not in first_card
    assert 'data-letter="B"' in final_card and "<details" in final_card and "&lt;via&gt;" in final_card
    assert final["thinking"]["letter"] == "B" and final["thinking"]["agrees"] is False and final["letter"] == "B"
    assert final["explanation"] == REASONED and final["disclaimer"] == DISCLAIMER
    assert result["thinking"]["letter"] == "B" and result["letter"] == "B"
    plain = serve.build_demo(model, tok)  # letter scoring: the explanation box is not in an accordion
    assert not any(getattr(b, "elem_id", None) == "reasoning-stream" for b in plain.blocks.values())


def test_demo_cli_thinking_flag(qwen_dir, monkeypatch):
    ns = _sub(serve.add_demo_parser).parse_args(["demo", "--model", str(qwen_dir), "--device", "cpu", "--thinking"])
    seen = {}
    monkeypatch.setattr(serve, "launch", lambda demo, **kw: seen.update(kw, demo=demo))
    monkeypatch.setattr(serve, "build_demo", lambda answerer, **kw: seen.update(kw) or object())
    assert ns.handler(ns) == 0
    assert seen["thinking"] is True and seen["max_new_tokens"] == 1024
    ns = _sub(serve.add_demo_parser).parse_args(["demo", "--model", str(qwen_dir)])
    predict_mod.resolve_answer_arguments(ns)  # what demo_main does first: without --thinking, the explanation cap
    assert ns.thinking is False and ns.max_new_tokens == 128
    ns = _sub(serve.add_demo_parser).parse_args(["demo", "--thinking", "--max-new-tokens", "0"])
    with pytest.raises(ConfigError, match="max-new-tokens must be at least 1"):
        ns.handler(ns)  # before any model loads

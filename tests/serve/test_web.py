"""The chat page in headless Chromium (Debian's chromium driven by Playwright): type a message, press send,
watch a streamed reply appear; a second turn carries the first; code fences render as <pre><code>; Stop
aborts a reply and frees its batch row; with `serve --index` the sources are listed, as text, under the
reply. Skips, with the reason, only when no chromium binary exists."""

from __future__ import annotations

import shutil
import time

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
    pytest.mark.slow,  # a browser starts
]


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


# Records, inside the page, every text the reply showed while it still carried the `streaming` class. Polling
# for `.streaming` races a tiny model, which can finish 40 tokens between two polls (CI saw exactly that).
WATCH_STREAMING = """() => {
  window.streamedTexts = [];
  new MutationObserver(ms => { for (const m of ms) {
    const div = m.target.closest ? m.target.closest('.msg.assistant.streaming') : null;
    if (div && div.innerText) window.streamedTexts.push(div.innerText);
  } }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
}"""


def test_chat_page_streams_a_reply(page, server):
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('tiny-test')")
    page.evaluate(WATCH_STREAMING)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.fill("#input", "Write a function.")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.done")
    streamed = page.evaluate("window.streamedTexts")
    assert streamed, "the reply must be shown while it streams, not only when it is done"
    reply = page.locator(".msg.assistant").first
    text = reply.evaluate(
        "e => e.firstChild ? e.innerText.replace(e.querySelector('.meta').innerText, '') : ''"
    )
    srv = server.srv
    msgs = [{"role": "user", "content": "Write a function."}]
    from phiforge.infer.sampling import SamplingParams

    want = srv.engine.chat(msgs, SamplingParams(max_new_tokens=40, temperature=0))
    assert want.text.strip() and text.strip() == want.text.strip()
    assert "finish:" in reply.locator(".meta").inner_text()
    assert all(u.startswith(server.url) for u in seen), "the page must not fetch anything from elsewhere"

    # second turn: the request carries the whole conversation
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.method == "POST" else None)
    page.fill("#input", "And another.")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant.done >> nth=1")
    roles = [m["role"] for m in bodies[-1]["messages"]]
    assert roles == ["user", "assistant", "user"] and bodies[-1]["stream"] is True
    assert bodies[-1]["messages"][1]["content"] == want.text


def test_code_fences_render_and_markup_is_escaped(page, server):
    page.goto(server.url + "/")
    html = page.evaluate("render('see:\\n```python\\nprint(1 < 2)\\n```\\n<b>x</b> `y`')")
    assert '<pre><code class="language-python">print(1 &lt; 2)</code></pre>' in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<code>y</code>" in html


def test_stop_button_aborts_and_frees_the_row(page, server, monkeypatch):
    b = server.srv.batcher
    cancelled = b.n_cancelled
    model = b.model

    def slow_model(*a, **kw):  # a tiny model finishes 150 tokens before a click lands: slow it to 20 ms/step
        time.sleep(0.02)
        return model(*a, **kw)

    monkeypatch.setattr(b, "model", slow_model)
    monkeypatch.setattr(b, "_native_ok", False)  # a row alone would take the native decode path
    monkeypatch.setattr(b, "_rows_ok", False)  # and many rows the native RowsDecoder: both skip b.model
    page.goto(server.url + "/")
    page.wait_for_selector("#model:has-text('tiny-test')")
    page.fill("#temperature", "1")
    page.fill("#max-tokens", "150")
    # a long reply: ignore the stop tokens through a request patch (the page itself only sends OpenAI fields)
    page.route("**/v1/chat/completions", lambda route: route.continue_(
        post_data={**route.request.post_data_json, "ignore_eos": True}))  # fmt: skip
    page.fill("#input", "Go on forever.")
    page.click("#send")
    page.wait_for_function("document.querySelector('.msg.assistant.streaming')?.innerText.length > 0")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant.done")
    assert "finish: stopped" in page.locator(".msg.assistant .meta").inner_text()
    deadline = time.time() + 10
    while b.n_cancelled == cancelled and time.time() < deadline:
        time.sleep(0.02)
    assert b.n_cancelled == cancelled + 1
    reply = page.locator(".msg.assistant").first.inner_text()
    assert len(server.srv.engine.tok.encode(reply)) < 100  # it really stopped early


def test_sources_are_listed_under_the_reply(page, start_server, model_dir, rag_index):
    import httpx2 as httpx

    q = "red green blue to hue lightness"  # the document whose id is markup ranks first
    with start_server(model_dir, index=rag_index) as rag:
        body = {"model": "tiny-test", "messages": [{"role": "user", "content": q}], "max_tokens": 8}
        sources = httpx.post(rag.url + "/v1/chat/completions", json=body, timeout=60).json()["sources"]
        page.goto(rag.url + "/")
        page.wait_for_selector("#model:has-text('tiny-test')")
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "8")
        page.fill("#input", q)
        page.click("#send")
        page.wait_for_selector(".msg.assistant.done")
        box = page.locator(".msg.assistant .sources")
        assert box.inner_text().startswith("sources:")
        items = box.locator("li").all_inner_texts()
        assert items == [f"{s['title']}#{s['chunk']}" for s in sources] and items[0] == "<b>bold</b>.txt#0"
        assert box.locator("b").count() == 0  # the title is shown as text, never parsed as markup

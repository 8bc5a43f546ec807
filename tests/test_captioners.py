"""Captioners: the template (world sidecars, description) and the OpenAI-compatible one, talking through the
real `openai` client to a local HTTP server started here (OK, slow, 401, refusal), with the fallbacks."""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from aa_train.captioners import clean_reply, openai_captions, template_captions, world_context
from aa_train.preprocess import PrepareConfig, ReadSettings, prepare_identity
from aa_world.captions import class_caption, identity_caption
from aa_world.clips import ClipSpec, render_clip, write_clip

KEY = "sk-test-Zq8SECRETkey1234567890"
REPLY = "Wearing a red striped shirt and blue trousers, waving on a sunny beach."


class Endpoint(BaseHTTPRequestHandler):
    """POST /v1/chat/completions; the behaviour is the server's `mode`; requests are recorded."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if srv.mode == "slow":
            time.sleep(2.0)
        if srv.mode == "401":
            # real services echo (part of) the key in the message: it must never reach our output
            return self._send(401, {"error": {"message": f"Incorrect API key provided: {KEY}",
                                              "type": "invalid_request_error", "code": "invalid_api_key"}})
        message = {"role": "assistant", "content": srv.reply, "refusal": None}
        if srv.mode == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with identifying people."}
        self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model"), "choices": [{"index": 0, "message": message,
                                                                  "finish_reason": "stop", "logprobs": None}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})

    def _send(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(monkeypatch):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    srv.daemon_threads = True
    srv.mode, srv.reply, srv.requests = "ok", REPLY, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    clip = render_clip(ClipSpec(identity_seed=11, scene="forest", scene_seed=3, motion="walk",
                                objects=(("dog", "brown"),), frames=6, fps=8.0, width=64, height=64))
    return clip, write_clip(clip, tmp_path_factory.mktemp("world") / "ref.mp4")


FRAMES = np.random.default_rng(0).integers(0, 256, (7, 40, 30, 3), dtype=np.uint8)
FALLBACK = template_captions("<me>", "man")


# =============================================================================================== template
def test_template_captions():
    r = template_captions("<me>", "man")
    assert (r.caption, r.class_caption, r.captioner) == ("a photo of <me> man", "a photo of man", "template")
    r = template_captions("<me>", "woman", description="in a green coat")
    assert r.caption == "a photo of <me> woman, in a green coat"
    assert r.class_caption == "a photo of woman, in a green coat"
    ctx = world_context({"motion": "wave", "scene": "beach", "objects": [{"kind": "balloon", "colour": "red"}]})
    r = template_captions("<me>", "man", ctx)
    assert r.caption == identity_caption("<me>", "man", "wave", "beach", [("balloon", "red")])
    assert r.class_caption == class_caption("man", "wave", "beach", [("balloon", "red")])
    assert world_context({"motion": "moonwalk", "scene": "beach"}) is None and world_context(None) is None


@pytest.mark.parametrize("reply, want", [
    (REPLY, "wearing a red striped shirt and blue trousers, waving on a sunny beach"),
    ("A man wearing a grey hoodie, jogging in a park.\nExtra line", "wearing a grey hoodie, jogging in a park"),
    ('"in a yellow dress, dancing on a stage"', "in a yellow dress, dancing on a stage"),
    ("I'm sorry, I can't help with that.", None), ("", None), ("   ", None), (None, None), ("beach", None),
])
def test_clean_reply(reply, want):
    assert clean_reply(reply, "man") == want


# ================================================================================================= openai
def test_openai_caption_through_the_real_client(server, caplog):
    with caplog.at_level(logging.WARNING):
        r = openai_captions(FRAMES, "<me>", "man", FALLBACK, model="gpt-4o", timeout=10)
    assert r.caption == "a <me> man, wearing a red striped shirt and blue trousers, waving on a sunny beach"
    assert r.class_caption == "a man, wearing a red striped shirt and blue trousers, waving on a sunny beach"
    assert (r.captioner, r.fell_back, r.warning) == ("openai", False, None) and not caplog.records
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "gpt-4o"
    [msg] = req["body"]["messages"]
    texts = [p for p in msg["content"] if p["type"] == "text"]
    images = [p for p in msg["content"] if p["type"] == "image_url"]
    assert len(images) == 3 and len(texts) == 1
    assert all(w in texts[0]["text"] for w in ("clothing", "action", "scene"))
    sent = []
    for p in images:
        url = p["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        sent.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))))
    for got, want in zip(sent, FRAMES[[0, 3, 6]]):  # first, middle, last, losslessly
        np.testing.assert_array_equal(got, want)


def test_openai_timeout_falls_back(server, caplog):
    server.mode = "slow"
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        r = openai_captions(FRAMES, "<me>", "man", FALLBACK, timeout=0.3)
    assert time.perf_counter() - t0 < 1.8  # no retries
    assert (r.caption, r.class_caption, r.fell_back) == (FALLBACK.caption, FALLBACK.class_caption, True)
    [rec] = caplog.records
    assert rec.levelno == logging.WARNING and "timeout" in rec.getMessage() and "\n" not in rec.getMessage()


def test_openai_401_never_shows_the_key(server, caplog, capsys):
    server.mode = "401"
    with caplog.at_level(logging.DEBUG):
        r = openai_captions(FRAMES, "<me>", "man", FALLBACK, timeout=5)
    assert r.fell_back and r.caption == FALLBACK.caption
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "401" in warnings[0].getMessage()
    out = capsys.readouterr()
    for text in (out.out, out.err, caplog.text, r.warning):
        assert KEY not in text and KEY[-8:] not in text


@pytest.mark.parametrize("mode, reply", [("refusal", REPLY), ("ok", ""), ("ok", "I'm sorry, but I cannot help.")])
def test_openai_refusal_or_empty_falls_back(server, caplog, mode, reply):
    server.mode, server.reply = mode, reply
    with caplog.at_level(logging.WARNING):
        r = openai_captions(FRAMES, "<me>", "man", FALLBACK, timeout=5)
    assert r.fell_back and r.caption == FALLBACK.caption and len(server.requests) == 1
    assert len(caplog.records) == 1 and "refused or gave an empty reply" in caplog.records[0].getMessage()


def test_openai_without_key_falls_back_without_a_request(server, caplog, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with caplog.at_level(logging.WARNING):
        r = openai_captions(FRAMES, "<me>", "man", FALLBACK)
    assert r.fell_back and r.caption == FALLBACK.caption and server.requests == []
    assert len(caplog.records) == 1 and "OPENAI_API_KEY is not set" in caplog.records[0].getMessage()


# ======================================================================================= through prepare
def _all_cached_text(cache) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in cache.rglob("*") if p.is_file())


def test_prepare_with_openai_caption_and_cache(server, world, tmp_path):
    clip, video = world
    cfg = PrepareConfig(video=video, token="<me>", class_word="man", read=ReadSettings(captioner="openai"),
                        cache_dir=tmp_path / "c")
    data = prepare_identity(cfg)
    assert data.caption.startswith("a <me> man, wearing a red striped shirt") and "<me>" not in data.class_caption
    assert data.source["captioner_used"] == "openai" and data.source["openai_model"] == "gpt-4o"
    assert data.source["captioner_fallback"] is False
    # the captioner saw full frames (the scene), not the person crop
    url = server.requests[0]["body"]["messages"][0]["content"][1]["image_url"]["url"]
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 64)
    assert KEY not in json.dumps(data.source) and KEY not in _all_cached_text(tmp_path / "c")
    again = prepare_identity(cfg)
    assert again.source["cache_hit"] and again.caption == data.caption and len(server.requests) == 1


def test_prepare_401_fallback_keeps_the_key_out_of_outputs(server, world, tmp_path, capsys, caplog):
    clip, video = world
    server.mode = "401"
    cfg = PrepareConfig(video=video, token="<me>", class_word="man", read=ReadSettings(captioner="openai"),
                        cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        data = prepare_identity(cfg)
    assert data.caption == identity_caption("<me>", "man", "walk", "forest", [("dog", "brown")])
    assert data.source["captioner_fallback"] is True and data.source["captioner_used"] == "template"
    out = capsys.readouterr()
    for text in (json.dumps(data.source), _all_cached_text(tmp_path / "c"), out.out, out.err, caplog.text):
        assert KEY not in text
    # a fallback is retried on the next run once the endpoint works, and the cache is updated
    server.mode = "ok"
    data = prepare_identity(cfg)
    assert data.source["cache_hit"] and data.source["captioner_used"] == "openai"
    assert data.caption.startswith("a <me> man, wearing")
    assert prepare_identity(cfg).caption == data.caption and len(server.requests) == 2


def test_world_appearance_is_the_caption_before_the_context():
    from aa_train.captioners import described_appearance, world_appearance
    from aa_world.captions import full_caption
    from aa_world.identity import sample_identity

    for seed in range(40):  # bald, ponytail and short-haired people, with and without extras
        person = sample_identity(seed)
        ctx = world_context({"motion": "wave", "scene": "snow field",
                             "objects": [{"kind": "balloon", "colour": "red"}]})
        caption = full_caption(person, "wave", "snow field", [("balloon", "red")])
        got = world_appearance(caption, ctx, "<me>", person.class_word)
        assert got is not None and got.replace(" <me>", "", 1) + ", waving in a snow field, holding a red balloon" \
            == caption
        assert f"<me> {person.class_word}" in got
    person = sample_identity(3)
    assert world_appearance("a photo of a man", ctx, "<me>", person.class_word) is None  # not a world caption
    assert world_appearance(full_caption(person, "walk", "beach"), ctx, "<me>", person.class_word) is None
    assert world_appearance(None, ctx, "<me>", "man") is None
    assert described_appearance("<me>", "man", ", in a green coat ") == "a <me> man in a green coat"


def test_judge_reads_the_appearance_of_rendered_people():
    """The judge as a captioner of the world: a consistent identity whose attributes mostly match the rendered ones
    (measured 0.83 over 30 held-out people turning on a beach; 0.65 leaves room for another CPU's rounding)."""
    from aa_train.captioners import judge_appearance
    from aa_world.identity import ATTRIBUTE_VALUES
    from aa_world.judge import Judge, read_identity

    judge = Judge.load()
    hits = []
    for k, seed in enumerate(range(1_000_100, 1_000_108)):
        clip = render_clip(ClipSpec(identity_seed=seed, scene="beach", scene_seed=k, motion="turn", frames=16,
                                    fps=8.0, seed=k))
        read = read_identity(judge, clip.frames, clip.identity.class_word)  # Identity validates its consistency
        hits += [getattr(read, a) == getattr(clip.identity, a) for a in ATTRIBUTE_VALUES if a != "class_word"]
        phrase = judge_appearance(clip.frames, "<me>", clip.identity.class_word, judge)
        assert phrase.startswith("a ") and f"<me> {clip.identity.class_word}" in phrase
    assert np.mean(hits) >= 0.65

"""`aa-studio`: the whole job in a local web page (Gradio), over the library API.

    Learn a person  — a reference video (or the bundled example) → annotation preview and the written appearance,
                      editable → training with a live progress line and loss plot → the adapter in the library
    Direct          — an identity (or none), a prompt, a motion (built-in, a video, or an .aa.json) → the video,
                      the pose | result preview and the run's JSON sidecar
    Identities      — the library: name, class, base, date, training summary; download, delete

One job runs at a time (the queue shows a waiting request its place); the base for Direct loads once per process
and every identity merged into it is undone after its run. Served on 127.0.0.1 unless --host says otherwise, no
share tunnel, uploads checked for kind, size and length before they are decoded, every user error shown as its
one line, nothing half-written left in the library, and library names never taken as paths from the browser.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Queue

from aa_runtime.errors import AAError
from aa_runtime.files import atomic_path, cache_root
from aa_runtime.video import VIDEO_SUFFIXES

NAME = re.compile(r"[A-Za-z0-9_\-]{1,40}")
EXAMPLE = "the bundled example (a woman turning on a beach)"


@dataclass
class StudioConfig:
    """What `aa-studio` serves."""

    base: str | None = None  # aa bundle or SD1.5 folder (default: models/aa-tiny)
    motion_module: str | None = None
    library: Path | None = None  # identity adapters (default: under the cache root)
    max_upload_mb: float = 200.0
    max_seconds: float = 120.0  # reference and driving videos
    work: Path | None = None  # outputs of Direct (default: a temporary folder)

    def __post_init__(self):
        self.library = Path(self.library or cache_root("studio") / "library").expanduser()
        self.work = Path(self.work or tempfile.mkdtemp(prefix="aa-studio-"))
        if not self.max_upload_mb > 0 or not self.max_seconds > 0:
            raise AAError("limits", f"{self.max_upload_mb} MB / {self.max_seconds} s", "use positive limits")


# ------------------------------------------------------------------------------------------------ checks
def check_upload(path: str | Path | None, cfg: StudioConfig, what: str = "video") -> Path:
    """An uploaded video, checked for kind (extension and container), size and length before any frame is decoded."""
    if not path:
        raise AAError(what, "nothing uploaded", "upload a video (mp4, mov, webm, avi, mkv or gif)")
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise AAError(what, path.name, f"upload one of {', '.join(sorted(VIDEO_SUFFIXES))}")
    mb = path.stat().st_size / 2**20
    if mb > cfg.max_upload_mb:
        raise AAError(what, f"{path.name} is {mb:.0f} MB", f"upload at most {cfg.max_upload_mb:g} MB "
                      "(aa-studio --max-upload-mb raises the limit)")
    seconds = video_seconds(path)
    if seconds > cfg.max_seconds:
        raise AAError(what, f"{path.name} runs {seconds:.0f} s", f"upload at most {cfg.max_seconds:g} s "
                      "(a few seconds of one person are enough)")
    return path


def video_seconds(path: Path) -> float:
    """The container's duration, read from its header (no frame decoded); one line when it is not a video."""
    import av

    try:
        with av.open(str(path)) as box:
            stream = next((s for s in box.streams if s.type == "video"), None)
            if stream is None:
                raise AAError("video", f"{path.name} holds no video stream", "upload a video file")
            if box.duration is not None:
                return box.duration / 1_000_000
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            return 0.0
    except AAError:
        raise
    except Exception as e:  # PyAV raises its own error per container problem
        raise AAError("video", f"{path.name} is not a readable video ({type(e).__name__})",
                      "upload an mp4, mov, webm, avi, mkv or gif file") from None


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME.fullmatch(name):
        raise AAError("name", repr(name), "use 1–40 letters, digits, _ or -, e.g. me (the prompt token is <me>)")
    return name


# ----------------------------------------------------------------------------------------------- library
class Library:
    """The identity folder: NAME.safetensors (+ NAME.annotations.png, NAME.loss.png) per identity."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        """The adapter of a listed identity; a name not in the library is refused (never joined as a path)."""
        listed = {p.stem: p for p in self.folder.glob("*.safetensors")}
        if name not in listed:
            raise AAError("identity", repr(name), "pick one from the Identities list")
        return listed[name]

    def rows(self) -> list[list]:
        from aa_runtime.adapters import load_adapter

        rows = []
        for p in sorted(self.folder.glob("*.safetensors")):
            try:
                a = load_adapter(p)
            except AAError:
                continue  # not an identity adapter: not listed
            training = a.meta.get("training", {})
            rows.append([p.stem, a.meta.get("class_word", ""), str(a.meta.get("base_fingerprint", ""))[:16],
                         time.strftime("%Y-%m-%d %H:%M", time.localtime(p.stat().st_mtime)),
                         f"{training.get('train_seconds', '?')} s, caption {training.get('caption', '')!r}"])
        return rows

    def thumbnails(self) -> list[tuple[str, str]]:
        """(annotation preview PNG, name) of every identity that has one: what the trainer saw of the person."""
        return [(str(p.with_suffix(".annotations.png")), p.stem) for p in sorted(self.folder.glob("*.safetensors"))
                if p.with_suffix(".annotations.png").is_file()]

    def names(self) -> list[str]:
        return [r[0] for r in self.rows()]

    def delete(self, name: str) -> None:
        path = self.path(name)
        for p in (path, path.with_suffix(".annotations.png"), path.with_suffix(".loss.png")):
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- jobs
class Studio:
    """The page's work: preparing, training and generating, over the library API."""

    def __init__(self, cfg: StudioConfig):
        self.cfg = cfg
        self.library = Library(cfg.library)
        self._base = None
        self._pristine = None
        self._lock = threading.Lock()

    # ----- the base for Direct: loaded once, identities undone after each run
    def base(self):
        from aa_runtime.device import resolve_device
        from aa_runtime.model import load_base

        if self._base is None:  # on the device and dtype aa-run's "auto" picks, as run() will
            device, dtype = resolve_device("auto", "auto")
            self._base = load_base(self.cfg.base, self.cfg.motion_module, device=device, dtype=dtype)
            self._pristine = {k: v.clone() for k, v in self._base.unet.state_dict().items()}
        return self._base

    def example_video(self) -> Path:
        """The bundled example person (the demo's reference), rendered once into the work folder."""
        from aa_world.clips import EXAMPLE_REFERENCE, ClipSpec, render_clip, write_clip

        path = self.cfg.work / "example" / "reference.mp4"
        if not path.is_file():
            write_clip(render_clip(ClipSpec(**EXAMPLE_REFERENCE)), path)
        return path

    def reference(self, upload, use_example: bool) -> Path:
        return self.example_video() if use_example else check_upload(upload, self.cfg, "reference video")

    def prepare(self, upload, use_example: bool, name: str, class_word: str) -> tuple[str, str, str]:
        """Annotation preview PNG, the written appearance (editable before training) and the reference shown."""
        from aa_train.preprocess import PrepareConfig, ReadSettings, prepare_identity, write_preview

        video = self.reference(upload, use_example)
        name = check_name(name)
        captioner = "judge" if use_example else "template"  # the example is a world clip: the judge reads it
        data = prepare_identity(PrepareConfig(video=video, token=f"<{name}>", class_word=class_word.strip(),
                                              read=ReadSettings(captioner=captioner),
                                              cache_dir=self.cfg.work / "cache"))
        preview = write_preview(data, self.cfg.work / "previews" / f"{name}.png")
        appearance = data.source.get("appearance") or ""
        return str(preview), appearance, str(video)

    def learn(self, upload, use_example: bool, name: str, class_word: str, appearance: str, stage1: int,
              stage2: int, decouple: bool, events: Queue) -> Path:
        """Train the identity into a temporary file, then move it into the library (nothing half-written there).
        Progress goes to `events` as ("step", stage, step, total, loss) and ("log", line)."""
        from aa_train.identity import WIDE_REACH, IdentityTrainConfig, decoupled_settings, train_identity
        from aa_train.preprocess import ReadSettings

        video = self.reference(upload, use_example)
        name, class_word = check_name(name), class_word.strip()
        appearance = (appearance or "").strip()
        with tempfile.TemporaryDirectory(dir=self.cfg.work) as tmp:
            out = Path(tmp) / f"{name}.safetensors"
            read = ReadSettings(description=_description(appearance, name, class_word) or None,
                                captioner="judge" if use_example else "template")
            cfg = IdentityTrainConfig(video=video, name=name, class_word=class_word, output=out, base=self.cfg.base,
                                      motion_module=self.cfg.motion_module, stage1_steps=int(stage1),
                                      stage2_steps=int(stage2), describe=bool(appearance) or use_example, read=read,
                                      cache_dir=self.cfg.work / "cache",
                                      **WIDE_REACH, **(decoupled_settings(class_word) if decouple else {}))
            train_identity(cfg, log=lambda m: events.put(("log", m)),
                           progress=lambda *a: events.put(("step", *a)))
            final = self.library.folder / out.name
            for suffix in (".annotations.png", ".loss.png"):
                if out.with_suffix(suffix).is_file():
                    shutil.move(out.with_suffix(suffix), final.with_suffix(suffix))
            with atomic_path(final) as dest:  # the adapter last: a listed identity is always complete
                shutil.copyfile(out, dest)
        return final

    def direct(self, identity: str | None, prompt: str, motion: str, upload, steps: int, guidance: float, seed: int,
               frames: int, scheduler: str) -> dict[str, Path]:
        """Generate one video (mp4, preview, sidecar) with the base loaded once; the identity is undone after."""
        from aa_runtime.generate import RunConfig, run

        pose = None
        if upload:
            upload = Path(upload)
            pose = str(upload if upload.name.endswith(".json") else check_upload(upload, self.cfg, "driving video"))
        adapter = str(self.library.path(identity)) if identity else None
        out = self.cfg.work / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}.mp4"
        run_cfg = RunConfig(prompt=prompt, output=out, base=self.cfg.base, adapter=adapter, pose=pose,
                            motion=None if pose else motion, steps=int(steps), guidance=float(guidance),
                            seed=int(seed), frames=int(frames), scheduler=scheduler or None, gif=False,
                            progress=False)
        with self._lock:
            base = self.base()
            try:
                return run(run_cfg, warn=lambda m: None, base=base)
            finally:
                if adapter is not None:
                    base.unet.load_state_dict(self._pristine)


def _description(appearance: str, name: str, class_word: str) -> str:
    """The appearance as the trainer's --description takes it: what follows '<name> class' (or the whole text)."""
    text = appearance.strip()
    for head in (f"a <{name}> {class_word}", f"<{name}> {class_word}", f"a {class_word}"):
        if text.lower().startswith(head.lower()):
            return text[len(head):].strip(" ,")
    return text


# --------------------------------------------------------------------------------------------------- page
def build_app(cfg: StudioConfig):
    import gradio as gr
    import pandas as pd

    from aa_runtime.motions import MOTIONS
    from aa_runtime.schedulers import SCHEDULERS

    studio = Studio(cfg)

    def fail(e: Exception):
        return gr.Error(str(e), print_exception=False)

    def prepare(upload, use_example, name, class_word):
        try:
            return studio.prepare(upload, use_example, name, class_word)
        except AAError as e:
            raise fail(e) from None

    def learn(upload, use_example, name, class_word, appearance, stage1, stage2, decouple):
        events: Queue = Queue()
        result: dict = {}

        def work():
            try:
                result["path"] = studio.learn(upload, use_example, name, class_word, appearance, stage1, stage2,
                                              decouple, events)
            except AAError as e:
                result["error"] = e
            except Exception as e:  # never a traceback in the page: the one line, and the log keeps the rest
                result["error"] = AAError("training", f"{type(e).__name__}: {str(e)[:200]}", "see the console")
            events.put(("done",))

        threading.Thread(target=work, daemon=True).start()
        losses, status, t0 = [], "starting: reading the reference…", time.time()
        while True:
            try:
                ev = events.get(timeout=0.5)
            except Empty:
                continue
            if ev[0] == "done":
                break
            if ev[0] == "log":
                status = ev[1]
            else:
                _, stage, step, total, loss = ev
                losses.append({"step": len(losses) + 1, "loss": float(loss), "stage": stage})
                rate = len(losses) / max(time.time() - t0, 1e-6)
                left = (total - step) + (int(stage2) if stage == "stage1" else 0)
                status = f"{stage}: step {step}/{total}, loss {loss:.4f}, about {left / max(rate, 1e-6):.0f} s left"
            yield status, pd.DataFrame(losses or [{"step": 0, "loss": 0.0, "stage": "stage1"}]), None, \
                gr.update()
        if "error" in result:
            raise fail(result["error"])
        path = result["path"]
        yield (f"done: {path.stem} is in the library ({path})", pd.DataFrame(losses), str(path),
               gr.update(choices=[""] + studio.library.names(), value=path.stem))

    def direct(identity, prompt, motion, upload, steps, guidance, seed, frames, scheduler):
        try:
            written = studio.direct(identity or None, prompt, motion, upload, steps, guidance, seed, frames,
                                    scheduler)
        except AAError as e:
            raise fail(e) from None
        return str(written["video"]), str(written["preview"]), json.loads(written["sidecar"].read_text())

    def insert_token(identity, prompt):
        if not identity:
            return prompt
        cls = ""
        try:
            from aa_runtime.adapters import load_adapter

            cls = load_adapter(studio.library.path(identity)).meta.get("class_word", "")
        except AAError:
            pass
        token = f"<{identity}>"
        return prompt if token in (prompt or "") else f"a {token} {cls} {prompt or ''}".replace("  ", " ").strip()

    def listing():
        return pd.DataFrame(studio.library.rows(), columns=["name", "class", "base", "created", "training"])

    def thumbnails():
        return studio.library.thumbnails()

    def delete(name):
        try:
            studio.library.delete(name)
        except AAError as e:
            raise fail(e) from None
        return listing(), gr.update(choices=[""] + studio.library.names(), value=""), thumbnails()

    def download(name):
        try:
            return str(studio.library.path(name))
        except AAError as e:
            raise fail(e) from None

    with gr.Blocks(title="AnimateAnywhere studio") as app:
        gr.Markdown("# AnimateAnywhere studio\nLearn a person from one short video, then direct them anywhere.")
        with gr.Tab("Learn a person"):
            with gr.Row():
                with gr.Column():
                    upload = gr.File(label="Reference video", file_types=sorted(VIDEO_SUFFIXES), type="filepath")
                    use_example = gr.Checkbox(label=f"Use {EXAMPLE}", value=False, elem_id="use-example")
                    name = gr.Textbox(label="Name (the prompt token is <name>)", value="me")
                    class_word = gr.Textbox(label="Class word", value="woman")
                    prep_btn = gr.Button("1. Read the video")
                with gr.Column():
                    ref_view = gr.Video(label="Reference", interactive=False)
                    preview = gr.Image(label="Poses and masks", interactive=False, elem_id="preview")
            appearance = gr.Textbox(label="What the person wears (edit before training)", lines=2)
            with gr.Row():
                stage1 = gr.Slider(1, 2000, value=240, step=1, label="Stage 1 steps (images)", elem_id="stage1")
                stage2 = gr.Slider(0, 1000, value=80, step=1, label="Stage 2 steps (clips)", elem_id="stage2")
                decouple = gr.Checkbox(label="Keep the person apart from the reference's scene and poses "
                                             "(recommended; slower)", value=True, elem_id="decouple")
            learn_btn = gr.Button("2. Learn", variant="primary")
            status = gr.Markdown(elem_id="status")
            plot = gr.LinePlot(x="step", y="loss", color="stage", label="Loss", height=240)
            adapter_file = gr.File(label="Adapter", interactive=False)
        with gr.Tab("Direct"):
            with gr.Row():
                with gr.Column():
                    identity = gr.Dropdown(label="Identity", choices=[""] + studio.library.names(), value="",
                                           allow_custom_value=False)
                    prompt = gr.Textbox(label="Prompt", value="dancing in a snow field")
                    token_btn = gr.Button("Insert the identity's token")
                    motion = gr.Dropdown(label="Built-in motion", choices=list(MOTIONS), value="dance")
                    driving = gr.File(label="…or a driving video / .aa.json pose file",
                                      file_types=[*sorted(VIDEO_SUFFIXES), ".json"], type="filepath")
                    with gr.Row():
                        steps = gr.Slider(1, 100, value=25, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(1, 15, value=5, step=0.5, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        frames = gr.Slider(1, 64, value=16, step=1, label="Frames", elem_id="frames")
                        scheduler = gr.Dropdown(label="Scheduler", choices=[""] + list(SCHEDULERS), value="")
                    with gr.Row():
                        go = gr.Button("Generate", variant="primary", elem_id="generate")
                        again = gr.Button("Same seed, other prompt")
                with gr.Column():
                    result = gr.Video(label="Result", interactive=False, elem_id="result-video")
                    pose_view = gr.Video(label="Pose | result", interactive=False)
                    sidecar = gr.JSON(label="Run sidecar")
        with gr.Tab("Identities"):
            table = gr.Dataframe(value=listing, interactive=False)
            gallery = gr.Gallery(value=thumbnails, label="What each identity was learnt from", columns=4, height=260)
            with gr.Row():
                pick = gr.Textbox(label="Identity name")
                down_btn = gr.Button("Download")
                del_btn = gr.Button("Delete", variant="stop")
            down_file = gr.File(label="Adapter file", interactive=False)
            refresh = gr.Button("Refresh")

        prep_btn.click(prepare, [upload, use_example, name, class_word], [preview, appearance, ref_view],
                       api_name="prepare")
        learn_btn.click(learn, [upload, use_example, name, class_word, appearance, stage1, stage2, decouple],
                        [status, plot, adapter_file, identity], api_name="learn")
        inputs = [identity, prompt, motion, driving, steps, guidance, seed, frames, scheduler]
        go.click(direct, inputs, [result, pose_view, sidecar], api_name="direct")
        again.click(direct, inputs, [result, pose_view, sidecar], api_name=False)  # the seed field is kept
        token_btn.click(insert_token, [identity, prompt], prompt, api_name=False)
        refresh.click(listing, None, table, api_name="identities")
        refresh.click(thumbnails, None, gallery, api_name=False)
        del_btn.click(delete, pick, [table, identity, gallery], api_name="delete")
        down_btn.click(download, pick, down_file, api_name="download")
    app.queue(default_concurrency_limit=1)
    return app


def launch(cfg: StudioConfig, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the studio; returns the app (with block=False, for tests and embedding)."""
    app = build_app(cfg)
    app.launch(server_name=host, server_port=port, share=False, max_file_size=f"{cfg.max_upload_mb:g}mb",
               allowed_paths=[str(cfg.library), str(cfg.work)], prevent_thread_lock=not block, show_error=True,
               quiet=True)
    return app

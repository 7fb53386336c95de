"""The page: Gradio components wired to :mod:`.explore`, :mod:`.jobs` and :mod:`.photo`.

Every handler checks what it is sent as :class:`~.explore.ExploreSettings` and the runs do (an
API call can send any value a slider would never allow) and turns the library's one-line errors
into a message in the page (``gr.Error``); the server goes on whatever a handler raises.
Components carry ``elem_id``s (``explore-grid``, ``adapt-start``, ...) for browser tests and
custom CSS.
"""
from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from ..errors import HyperdomainError
from ..training.adapt import AdaptConfig
from . import explore, jobs, photo
from .access import PUBLISHED
from .models import NONE, PROMPT, SOURCE, AppModels

log = logging.getLogger(__name__)

TITLE = "hyperdomain"
DEFAULT_PROMPT = "3D render in the style of Pixar"  # what the page shows first when a hypernetwork is loaded
STOP_WAIT = 120.0  # seconds Stop waits for the run to save before it answers (the page polls on after)


def page_message(text: str) -> str:
    """A message for the page: an upload named as the user named it, not by the server's path to
    Gradio's copy (``<upload folder>/<sha256 of the file>/<its name>``; the folder is
    ``$GRADIO_TEMP_DIR`` when set)."""
    from gradio.utils import get_upload_folder

    for folder in {str(get_upload_folder()), str(Path(get_upload_folder()).resolve())}:
        text = re.sub(re.escape(folder.rstrip("/")) + r"/[0-9a-f]{16,}/", "", text)
    return text


def page_errors(fn):
    """Show a handler's failure in the page: the library's one line, or the type and text of
    anything else (logged with its traceback on the server)."""
    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except HyperdomainError as e:
            raise gr.Error(page_message(str(e)), print_exception=False) from None
        except Exception as e:
            log.exception("handler %s failed", fn.__name__)
            raise gr.Error(page_message(f"{type(e).__name__}: {e}")[:500], print_exception=False) from None
    return wrapper


def build_app(models: AppModels, runs: jobs.Runs | None = None):
    """The Gradio Blocks of the app (not launched)."""
    import gradio as gr

    runs = runs or jobs.Runs(models)
    G = models.G
    choices = models.choices()
    has_hyper = models.hyper is not None
    first_choice = PROMPT if has_hyper else (choices[1] if len(choices) > 1 else SOURCE)
    intro = (f"Generator **{G.name}** ({G.resolution} px, {G.num_domain_params} domain numbers)"
             + (f"; hypernetwork **{Path(str(models.hyper.meta.get('file', 'loaded'))).name}**" if has_hyper else "")
             + f"; {len(models.domains)} domain file(s)"
             + (f"; photos through a **{models.encoder.config.kind}** encoder" if models.encoder is not None
                else "; photos by II2S (no encoder)")
             + (f"; {len(models.translators)} translator(s)" if models.translators else "")
             + f". Files this page makes for download go to `{models.work_dir / PUBLISHED}`.")

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## hyperdomain\n{intro}")
        with gr.Tab("Explore", id="explore"):
            with gr.Row():
                with gr.Column(scale=1):
                    domain = gr.Dropdown(choices, value=first_choice, label="Domain", elem_id="explore-domain",
                                         allow_custom_value=True)
                    prompt = gr.Textbox(DEFAULT_PROMPT if has_hyper else "", label="Prompt (hypernetwork)",
                                        visible=has_hyper, elem_id="explore-prompt",
                                        placeholder="e.g. Anime painting; Enter renders")
                    strength = gr.Slider(*explore.STRENGTH, value=1.0, step=0.05, label="Strength",
                                         elem_id="explore-strength")
                    second = gr.Dropdown([NONE] + choices, value=NONE, label="Mix with", elem_id="explore-second",
                                         allow_custom_value=True)
                    second_prompt = gr.Textbox(label="Second prompt (hypernetwork)", visible=has_hyper,
                                               elem_id="explore-second-prompt")
                    mix = gr.Slider(*explore.MIX, value=0.5, step=0.05, label="Mix (0: first, 1: second)",
                                    elem_id="explore-mix")
                    truncation = gr.Slider(*explore.TRUNCATION, value=0.7, step=0.05, label="Truncation",
                                           elem_id="explore-truncation")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="explore-seed")
                    count = gr.Slider(*explore.COUNT, value=8, step=1, label="Images", elem_id="explore-count")
                    render_button = gr.Button("Render", variant="primary", elem_id="explore-render")
                    upload = gr.File(label="Add a domain file (.safetensors)", file_types=[".safetensors"],
                                     elem_id="explore-upload")
                with gr.Column(scale=2):
                    grid = gr.Image(label="Samples", format="png", type="numpy", interactive=False, height=420,
                                    elem_id="explore-grid")
                    with gr.Row():
                        save_button = gr.Button("Save grid and domain", elem_id="explore-save")
                        animate_button = gr.Button("Animate", elem_id="explore-animate")
                    with gr.Row():
                        anim_mode = gr.Radio(list(explore.ANIMATION_MODES), value="strength", label="Animation",
                                             elem_id="explore-anim-mode")
                        anim_format = gr.Radio(list(explore.ANIMATION_FORMATS), value="gif", label="Format",
                                               elem_id="explore-anim-format")
                        anim_frames = gr.Slider(*explore.FRAMES, value=24, step=1, label="Frames",
                                                elem_id="explore-anim-frames")
                        anim_fps = gr.Slider(*explore.FPS, value=12, step=1, label="fps", elem_id="explore-anim-fps")
                    downloads = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                        elem_id="explore-downloads")
                    notice = gr.Markdown(elem_id="explore-notice")
            controls = [domain, prompt, strength, second, second_prompt, mix, truncation, seed, count]

            @page_errors
            def on_render(*values):
                if any(v is None for v in values):  # a number field being edited (emptied) in the page
                    return gr.skip()
                return explore.render(models, explore.ExploreSettings(*values))

            @page_errors
            def on_save(*values):
                return [str(p) for p in explore.save_downloads(models, explore.ExploreSettings(*values))]

            @page_errors
            def on_animate(*values, progress=gr.Progress()):
                *values, mode, fmt, frames, fps = values
                s = explore.ExploreSettings(*values)
                done = [0]

                def tick():  # the panel's animations have no way back: `frames` frames in all
                    done[0] += 1
                    progress(min(done[0] / max(int(frames), 1), 1.0), desc="rendering frames")

                return [str(explore.export_animation(models, s, mode, fmt, frames, fps, on_frame=tick))]

            @page_errors
            def on_upload(file):
                if file is None:
                    return gr.skip(), gr.skip(), ""
                name = models.add_domain_file(file)
                return (gr.update(choices=models.choices(), value=name),
                        gr.update(choices=[NONE] + models.choices()), f"Added domain **{name}**.")

            gr.on([c.input for c in (domain, strength, second, mix, truncation, seed, count)]
                  + [prompt.submit, second_prompt.submit, render_button.click, app.load],
                  on_render, controls, grid, api_name="explore", trigger_mode="always_last", preprocess=False)
            # preprocess=False: the values reach ExploreSettings as sent, which checks them and names
            # the control in its message (Gradio's own bound check names neither)
            save_button.click(on_save, controls, downloads, api_name="explore_files", preprocess=False)
            animate_button.click(on_animate, controls + [anim_mode, anim_format, anim_frames, anim_fps], downloads,
                                 api_name="explore_animation", preprocess=False)
            upload.upload(on_upload, upload, [domain, second, notice], api_name="add_domain")

        with gr.Tab("Adapt", id="adapt"):
            with gr.Row():
                with gr.Column(scale=1):
                    target = gr.Textbox(label="Target prompt", placeholder="3D render in the style of Pixar",
                                        elem_id="adapt-target")
                    source = gr.Textbox(value=G.source_prompt, label="Source prompt", elem_id="adapt-source")
                    reference = gr.File(label="Reference image (one-shot; optional)", elem_id="adapt-image")
                    iters = gr.Number(AdaptConfig.iters, precision=0, label="Steps",
                                      elem_id="adapt-iters")  # checked by Runs.start, which names it
                    lr = gr.Textbox("", label="Learning rate (empty: the trainer's default)", elem_id="adapt-lr")
                    run_seed = gr.Number(0, precision=0, label="Seed", elem_id="adapt-seed")
                    with gr.Row():
                        start = gr.Button("Start", variant="primary", elem_id="adapt-start")
                        stop = gr.Button("Stop", variant="stop", elem_id="adapt-stop")
                with gr.Column(scale=2):
                    status = gr.Markdown("No run yet.", elem_id="adapt-status")
                    curve = gr.LinePlot(x="step", y="value", color="loss", label="Losses", elem_id="adapt-losses")
                    preview = gr.Image(label="Source (top) and adapted (bottom)", format="png", interactive=False,
                                       height=260,
                                       elem_id="adapt-preview")
                    result = gr.File(label="Domain", interactive=False, elem_id="adapt-domain")
            seen = gr.State(None)  # [status version, domain names] the page shows

            @page_errors
            def on_start(target_text, source_text, image, steps, rate, seed_value):
                s = runs.start(target_text, source_text, image, steps, rate, seed_value)
                return _status_line(s)

            @page_errors
            def on_stop():
                runs.stop()
                s = runs.wait(STOP_WAIT)  # the end of the current step, then the save
                return _status_line(s), str(s.download) if s.download is not None and not s.busy else None

            def on_tick(last):
                """The run's state for the page, sent only when it changed; the domain lists only when a
                domain was added (not at every step, which would disturb a list being chosen from)."""
                s, names = runs.status(), models.choices()
                if last == [s.version, names]:
                    return (gr.skip(),) * 7 + (last,)
                new_names = not last or last[1] != names

                def listed(choices):
                    return gr.update(choices=choices) if new_names else gr.skip()

                finished = s.download is not None and not s.busy
                return (_status_line(s), _loss_table(s), s.preview if s.preview is not None else gr.skip(),
                        str(s.download) if finished else None, listed(names), listed([NONE] + names),
                        listed(names[1:]), [s.version, names])

            start.click(on_start, [target, source, reference, iters, lr, run_seed], status, api_name="adapt_start")
            stop.click(on_stop, None, [status, result], api_name="adapt_stop")

        with gr.Tab("Photo", id="photo"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo_file = gr.File(label="A photo (PNG, JPEG, WebP, ...)", elem_id="photo-file")
                    photo_domains = gr.Dropdown(models.choices()[1:], value=[], multiselect=True,
                                                label="Domains", elem_id="photo-domains",
                                                allow_custom_value=True)  # domains added later; checked by name
                    photo_prompt = gr.Textbox(label="Prompt (hypernetwork)", visible=has_hyper,
                                              elem_id="photo-prompt")
                    offered = photo.methods(models)
                    photo_method = gr.Radio(offered, value=offered[0], label="Inversion",
                                            info="encoder: one pass, in a second; II2S: the optimisation (steps "
                                                 "below), closer and slower", elem_id="photo-method")
                    photo_steps = gr.Number(photo.default_steps(models), precision=0, label="II2S steps",
                                            elem_id="photo-steps")
                    photo_button = gr.Button("Put the photo in the domains", variant="primary",
                                             elem_id="photo-run")
                    translators = sorted(models.translators)
                    with gr.Group(visible=bool(translators)):
                        photo_translator = gr.Dropdown(translators, value=translators[0] if translators else None,
                                                       label="Translator (one pass into its domain)",
                                                       elem_id="photo-translator")
                        translate_button = gr.Button("Translate the photo", elem_id="photo-translate")
                with gr.Column(scale=2):
                    photo_grid = gr.Image(label="Photo, then its reconstruction and each domain (or its translation)",
                                          format="png",
                                          interactive=False, height=260, elem_id="photo-grid")
                    photo_files = gr.File(label="Latent and images", file_count="multiple", interactive=False,
                                          elem_id="photo-files")

            @page_errors
            def on_photo(file, chosen, prompt_text, steps, method, progress=gr.Progress()):
                grid_array, files = photo.stylize_photo(models, file, chosen or [], prompt_text or "", steps,
                                                        on_step=lambda k, n: progress(k / n, desc="inverting"),
                                                        method=method)
                return grid_array, [str(p) for p in files]

            @page_errors
            def on_translate(file, name):
                grid_array, files = photo.translate_photo(models, file, name or "")
                return grid_array, [str(p) for p in files]

            photo_button.click(on_photo, [photo_file, photo_domains, photo_prompt, photo_steps, photo_method],
                               [photo_grid, photo_files], api_name="photo")
            translate_button.click(on_translate, [photo_file, photo_translator], [photo_grid, photo_files],
                                   api_name="translate")

        timer = gr.Timer(1.0)
        timer.tick(on_tick, seen, [status, curve, preview, result, domain, second, photo_domains, seen],
                   api_visibility="private", show_progress="hidden")
    return app


def _status_line(s: jobs.RunStatus) -> str:
    if s.state == "idle":
        return "No run yet."
    head = {"loading": "Loading", "running": "Running", "done": "Done", "stopped": "Stopped",
            "failed": "Failed"}[s.state]
    return f"**{head}** {s.what}: {s.message}"


def _loss_table(s: jobs.RunStatus):
    import pandas as pd

    return pd.DataFrame(list(s.losses), columns=["step", "loss", "value"])

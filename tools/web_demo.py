"""Segment your own images in the browser: a local Gradio page over `lib.predictor.Predictor`.

    python tools/web_demo.py --resume model_best_refcoco.pth --device cpu --port 7860

Open the printed address, upload an image, type one or more expressions (one per line) and press
Segment. Per expression the page shows the overlay (outside the mask darkened, the mask outlined,
as demo_inference.py draws it) and the mask, and offers the masks as PNG files to download (0/255,
at the image's own size, EXIF orientation applied). The architecture is read from the checkpoint.
The page listens on --host only (127.0.0.1 by default: this machine). Needs the optional package
gradio (`pip install -r requirements-demo.txt`; make setup does not install it).
"""
import argparse
import os
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import cli  # noqa: E402
from demo_inference import describe, overlay  # noqa: E402
from errors import UserInputError  # noqa: E402
from lib import ranges  # noqa: E402
from lib.predictor import Predictor, open_image  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resume", required=True, help="the checkpoint (.pth): ours or a released LAVT one")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (falls back to cpu without CUDA)")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (fp16: CUDA)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=ranges.flag_type(int, ranges.check_int, 0, 65535), default=7860,
                        help="port to listen on")
    return parser


def require_gradio():
    """The gradio module, or a clear error naming the missing optional package."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a local demo
    try:
        import gradio
    except ImportError:
        raise UserInputError("The web demo needs the optional package 'gradio', which is not installed: "
                             "pip install -r requirements-demo.txt (gradio and gradio_client).") from None
    return gradio


def segment(predictor, image_path, text, out_dir):
    """(overlays, masks, mask files, summary) for the image file and each non-empty line of `text`."""
    expressions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not image_path or not expressions:
        raise UserInputError("Upload an image and type at least one expression (one per line).")
    image = open_image(image_path)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    request_dir = tempfile.mkdtemp(dir=out_dir)  # names stay readable; requests do not overwrite each other
    overlays, masks, lines = [], [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictions = predictor.predict(image, expressions)
    for i, prediction in enumerate(predictions):
        path = os.path.join(request_dir, f"{stem}_{i}_mask.png")
        Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(path)
        overlays.append((overlay(image, prediction.mask), prediction.expression))
        masks.append((path, prediction.expression))
        lines.append(describe(i, prediction, os.path.basename(path)))
    lines += [f"Warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]  # shown on the page
    return overlays, masks, [path for path, _ in masks], "\n".join(lines)


def build_page(gr, predictor, out_dir):
    def run(image_path, text):
        try:
            return segment(predictor, image_path, text, out_dir)
        except (UserInputError, FileNotFoundError) as err:
            raise gr.Error(str(err)) from err  # shown on the page; other exceptions keep their traceback

    used = predictor.args
    with gr.Blocks(title="LAVT referring segmentation") as page:
        gr.Markdown(f"## LAVT referring segmentation\nModel: {used.model}, Swin-{used.swin_type}, "
                    f"text encoder {used.ck_bert}, {used.img_size} px input. Upload an image, type one "
                    "expression per line, press Segment.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Image")  # the uploaded file as is: EXIF, bit depth
                text = gr.Textbox(lines=3, label="Expressions (one per line)")
                button = gr.Button("Segment", variant="primary")
                summary = gr.Textbox(label="Summary", lines=2)
                files = gr.File(label="Mask PNGs", file_count="multiple")
            with gr.Column():
                overlays = gr.Gallery(label="Overlays", format="png", columns=3, height="auto")
                masks = gr.Gallery(label="Masks", columns=4, height="auto")
        button.click(run, [image, text], [overlays, masks, files, summary], api_name="segment")
    return page


def main(args):
    gr = require_gradio()
    predictor = Predictor.from_checkpoint(args.resume, device=cli.resolve_device(args.device),
                                          amp=None if args.amp == "off" else args.amp)
    with tempfile.TemporaryDirectory(prefix="lavt_web_demo_") as out_dir:
        build_page(gr, predictor, out_dir).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    cli.run_cli(main, get_parser())

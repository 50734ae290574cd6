"""The `handloom` command: generate hands from the trained checkpoint, and outpaint a body around one."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from handloom.errors import DEBUG_FLAG, debug_requested, exit_code
from handloom.logs import quiet_third_party
from handloom.params import MAX_IMAGE_SIDE, Params, load_params

DEFAULT_CHECKPOINT = Path("data/models/last.ckpt")  # the train stage's output (DVC artifact hand-dit)
DEFAULT_PARAMS = Path("params.yaml")


def size_pair(text: str) -> tuple[int, int]:
    """'512x768' or '16,24' -> (512, 768)."""
    try:
        a, b = text.replace("x", ",").split(",")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 512x768, got {text!r}") from None


def int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]; argparse reports anything else as `error: ...`, exit 2."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value
    return parse


def finite_float(low: float = 0.0):
    """An argparse type: a finite number >= low (an infinite guidance scale gives a black image)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low}, got {text}")
        return value
    return parse


SEED = int_in(0, 2**63 - 1)
SIDE = int_in(1, MAX_IMAGE_SIDE)
COUNT = int_in(1, 10_000)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as the rest of handloom reports bad input: one line, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def add_generate(commands) -> None:
    p = commands.add_parser("generate", help="a reference hand in a target pose or view",
                            description="Generate the reference's hand in the target's pose (--mode pose) or seen "
                            "from the target's view (--mode view). Images are centre-cropped to a square; without "
                            "--reference-keypoints MediaPipe finds the reference's hand on that square.")
    p.add_argument("--reference", type=Path, help="reference image, or a folder of them (batch)")
    p.add_argument("--target", type=Path, help="target pose: 42x3 keypoints (.npy/.json) or an image whose "
                   "MediaPipe keypoints are used; with a folder of references, one for all or a folder matched by stem")
    p.add_argument("--pairs", type=Path, help="batch: Parquet list with columns reference, target "
                   "[, mode, seed, reference_keypoints, output]; paths relative to the list")
    p.add_argument("--mode", choices=("pose", "view"), default="pose")
    p.add_argument("--out", type=Path, required=True, help="output PNG, or a folder in batch mode")
    p.add_argument("--reference-keypoints", type=Path, help="the reference's 42x3 keypoints (.npy/.json) in its "
                   "pixels, instead of MediaPipe's")
    p.add_argument("--reference-mask", type=Path, help="the reference's hand mask (PNG, 255 = hand) instead of one "
                   "drawn around its skeleton")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--params", type=Path, help="params.yaml the checkpoint was trained with (default ./params.yaml "
                   "if present): train.heatmap_sigma and train.vae_path; sampling defaults from evaluate")
    p.add_argument("--steps", type=COUNT, help="DDIM steps (default evaluate.sample_steps)")
    p.add_argument("--appearance-scale", type=finite_float(), help="guidance on the reference (default evaluate's)")
    p.add_argument("--pose-scale", type=finite_float(), help="guidance on the target pose (default evaluate's)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--size", type=SIDE, help="upscale the output to SIZE x SIZE (default: the model's resolution)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(run=run_generate)


def add_outpaint(commands) -> None:
    p = commands.add_parser("outpaint", help="paint a body around a generated hand (Pelykh et al.)",
                            description="Place the hand crop on a larger canvas and outpaint the rest with a local "
                            "diffusers inpainting pipeline, the kept region growing pass by pass; the hand's pixels "
                            "are kept bit for bit.")
    p.add_argument("--hand", type=Path, required=True, help="the hand crop (e.g. handloom generate's output)")
    p.add_argument("--pipeline", type=Path, required=True, help="inpainting pipeline folder (save_pretrained layout)")
    p.add_argument("--canvas", type=size_pair, required=True, help="WIDTHxHEIGHT of the result")
    p.add_argument("--at", type=size_pair, help="X,Y of the hand's top-left corner (default: centred)")
    p.add_argument("--hand-size", type=SIDE, help="resize the hand crop to this side first")
    p.add_argument("--prompt", default="a photo of a person")
    p.add_argument("--negative-prompt")
    p.add_argument("--passes", type=COUNT, default=3, help="mask expansion steps")
    p.add_argument("--steps", type=COUNT, default=30, help="denoising steps per pass")
    p.add_argument("--guidance-scale", type=finite_float(), default=7.5)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=run_outpaint)


def sampling_options(args, evaluate) -> dict:
    """Flags the user set, else the evaluate stage's settings (what the report's numbers were measured with)."""
    flags = dict(steps=args.steps or None, appearance_scale=args.appearance_scale, pose_scale=args.pose_scale)
    return dict(evaluate.sampling(), size=args.size, **{k: v for k, v in flags.items() if v is not None})


def failed(error: Exception | str) -> int:
    """Bad input, not a bug: one line and exit code 2, as the stage scripts do for bad params."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def run_generate(args) -> int:
    from handloom import generate as g  # imported here: torch and Lightning cost seconds that --help should not

    return generate_command(args, g)


def generate_command(args, g) -> int:
    batch = args.pairs is not None or (args.reference is not None and args.reference.is_dir())
    if args.pairs is None and (args.reference is None or args.target is None):
        raise g.GenerateError("give --reference and --target, or --pairs")
    if batch and (args.reference_keypoints or args.reference_mask):
        raise g.GenerateError("--reference-keypoints and --reference-mask are for one reference; a --pairs list "
                              "has a reference_keypoints column")
    if batch and args.out.exists() and not args.out.is_dir():
        raise g.GenerateError(f"--out {args.out} is a file; a batch writes into a folder")
    if not batch and args.out.is_dir():
        raise g.GenerateError(f"--out {args.out} is a folder; one pair writes one .png file")
    params_path = args.params or (DEFAULT_PARAMS if DEFAULT_PARAMS.exists() else None)
    params = load_params(params_path) if params_path else Params()
    model = g.load_generator(args.checkpoint, params.train, args.device)
    options = sampling_options(args, params.evaluate)
    if not batch:
        if args.reference_mask is not None:
            options["reference_mask"] = g.read_image(args.reference_mask, gray=True)
        pair = g.Pair(args.reference, args.target, args.out, args.mode, args.seed, args.reference_keypoints)
        g.write_png(args.out, g.generate_pair(pair, model, **options))
        print(args.out)
        return 0
    pairs = (g.parquet_pairs(args.pairs, args.out, args.mode, args.seed) if args.pairs is not None else
             g.folder_pairs(args.reference, args.target, args.out, args.mode, args.seed))
    failures = g.generate_batch(pairs, model, **options)
    for _, why in failures:
        print(f"error: {why}", file=sys.stderr)
    print(f"generated {len(pairs) - len(failures)} of {len(pairs)} pairs into {args.out}")
    return 2 if failures else 0


def run_outpaint(args) -> int:
    import cv2
    import torch

    from handloom.io import encode_png, read_image_file, write_bytes
    from handloom.logs import progress
    from handloom.outpaint import PlacementError, load_inpainting, outpaint, place_hand

    width, height = args.canvas
    if min(width, height) < 1 or max(width, height) > MAX_IMAGE_SIDE:
        return failed(f"--canvas must be between 1x1 and {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE}, got {width}x{height}")
    hand = read_image_file(args.hand).pixels
    if args.hand_size:
        hand = cv2.resize(hand, (args.hand_size,) * 2, interpolation=cv2.INTER_CUBIC)
    at = args.at or ((width - hand.shape[1]) // 2, (height - hand.shape[0]) // 2)
    try:
        place_hand(hand, args.canvas, at)  # before loading gigabytes of pipeline
    except PlacementError as e:
        return failed(e)
    pipe = load_inpainting(args.pipeline, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with progress(args.passes * args.steps, "outpaint", "step") as bar:  # minutes per pass on a CPU
        body = outpaint(pipe, hand, args.canvas, at, args.prompt, negative_prompt=args.negative_prompt,
                        passes=args.passes, steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                        progress=bar.update)
    write_bytes(args.out, encode_png(body))
    print(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Bad input (UserError, a missing file) is one line `error: ...` and exit code 2; anything else is a bug:
    one line and exit code 1, its traceback with --debug or HANDLOOM_DEBUG=1."""
    quiet_third_party()
    parser = Parser(prog="handloom", description=__doc__)
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an unexpected error")
    commands = parser.add_subparsers(required=True, metavar="command", parser_class=Parser)
    add_generate(commands)
    add_outpaint(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except Exception as e:  # noqa: BLE001 - the command's one exit point for every error
        return exit_code(e, args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())

"""`semclip export --onnx`: a fitted model's encoder and heads as one ONNX file, checked."""

from __future__ import annotations

import argparse

import torch

from semclip.artifact import load_model
from semclip.backbone import RANDOM_WEIGHTS_WARNING
from semclip.cli.commands import summary

TOLERANCE = 1e-4  # largest absolute difference to eager fp32 accepted


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help=summary("export"),
        description="Export a fitted model directory to ONNX (fp32, CPU, dynamic batch): input "
        "'images' (B, 3, S, S) normalised as the model preprocesses; outputs 'probabilities' "
        "(B, K) and 'anomaly_map' (B, g, g) at feature resolution. The file is then checked "
        "against eager PyTorch (max abs difference, must be <= 1e-4) and both are timed on "
        "ONNX Runtime's CPU provider and eager, on random inputs.",
    )
    parser.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    parser.add_argument("--model", required=True, help="model directory (semclip fit --out)")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument(
        "--check-batch", type=int, default=8, help="images in the check and timing batch (8)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for both timings (default: torch's)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from semclip.export import check_and_time, export_onnx

    if args.check_batch < 1:
        raise ValueError("--check-batch must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    if model.backbone.random_weights:
        print(RANDOM_WEIGHTS_WARNING.format(name=model.backbone.name))
    path = export_onnx(model, args.out)
    size = model.preprocess.image_size
    images = torch.randn(
        args.check_batch, 3, size, size, generator=torch.Generator().manual_seed(0)
    )
    report = check_and_time(model, path, images)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB): {model.backbone.describe()}")
    print(
        f"agreement with eager fp32: probabilities max |Δ| = {report.max_abs_prob:.2e}, "
        f"anomaly_map max |Δ| = {report.max_abs_map:.2e} (tolerance {TOLERANCE:.0e})"
    )
    print(
        f"CPU throughput, batch {report.batch}, {report.threads} threads: ONNX Runtime "
        f"{report.onnx_img_s:.1f} img/s, eager PyTorch {report.eager_img_s:.1f} img/s "
        f"(ratio {report.onnx_img_s / report.eager_img_s:.2f})"
    )
    worst = max(report.max_abs_prob, report.max_abs_map)
    if not worst <= TOLERANCE:
        print(f"error: the ONNX file disagrees with eager by {worst:.2e} > {TOLERANCE:.0e}")
        return 1
    return 0

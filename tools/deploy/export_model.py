#!/usr/bin/env python
r"""Exports a SACT detector to TorchScript (traced through Detectron2's
TracingAdapter, dense masked execution with every unit evaluated), as
Detectron2's tools/deploy/export_model.py --export-method tracing does.

    python tools/deploy/export_model.py --config-file configs/synthetic/sact_tiny.yaml \
        --output exported MODEL.WEIGHTS output/demo/model_final.pth

Writes OUTPUT/model.ts. It takes one image, float32 [3, H, W] in INPUT.FORMAT
(0-255, resized as the config's test-time resizing does), and returns
(boxes, scores, classes, then per block its ponder cost map and units map);
the names are stored in the file as sact_outputs.json. The example image is
--sample-image or the first image of DATASETS.TEST. Only --format torchscript
with --export-method tracing is provided: scripting cannot compile the model's
Python control flow, and ONNX is not provided (the onnx package is not a
dependency, and an ONNX export is untested). Config overrides (KEY VALUE ...)
end the command line, or follow --opts.
"""
import sys

from detectron2.utils.logger import setup_logger

from sact_det.apps.export import EXPORT_METHODS, FORMATS, check_format, export_model
from sact_det.engine.defaults import load_config
from sact_det.utils.cli import ToolParser, add_config_arguments, existing_file, output_dir, run_tool


def build_parser():
    parser = ToolParser(__doc__)
    parser.add_argument("--output", required=True, type=output_dir, metavar="DIR", help="output directory")
    parser.add_argument("--format", default=FORMATS[0], metavar="|".join(FORMATS),
                        help="torchscript, the only format (ONNX is not provided)")
    parser.add_argument("--export-method", default=EXPORT_METHODS[0], metavar="|".join(EXPORT_METHODS),
                        help="tracing, the only method (as Detectron2's --export-method tracing)")
    parser.add_argument("--sample-image", type=existing_file, metavar="FILE",
                        help="image to trace with (default: the first image of DATASETS.TEST)")
    add_config_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def export():
        check_format(args.format, args.export_method)  # before the config and the model
        setup_logger(name="sact_det")
        cfg = load_config(args.config_file, args.opts)
        path, names = export_model(cfg, args.output, args.format, args.sample_image, args.export_method)
        print(f"wrote {path}; outputs: {', '.join(names)}")
    return run_tool(export, parser.prog)


if __name__ == "__main__":
    sys.exit(main())

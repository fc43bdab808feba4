#!/usr/bin/env python
"""Converts a torchvision ImageNet ResNet checkpoint to a Detectron2 .pkl that
sact-det loads with MODEL.WEIGHTS (our own converter; see
sact_det/apps/torchvision_weights.py for the name mapping).

    python -c "import torch, torchvision; torch.save(torchvision.models.resnet50(weights=None).state_dict(), 'r50.pth')"
    python tools/convert_torchvision_to_d2.py r50.pth R-50-torchvision.pkl

Prints the config overrides the weights need (RGB input, torchvision's
normalisation, stride in the 3x3 convolution).
"""
import sys

from sact_det.apps.torchvision_weights import TORCHVISION_CONFIG, convert_torchvision_checkpoint
from sact_det.utils.cli import ToolParser, existing_file, output_file, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("input", type=existing_file, help="torchvision checkpoint (.pth: a ResNet state dict)")
    parser.add_argument("output", type=output_file(".pkl", create_parent=True),
                        help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)

    def convert():
        count, depth = convert_torchvision_checkpoint(args.input, args.output)
        print(f"wrote {count} tensors to {args.output}; use it with:")
        depth_opt = f" MODEL.RESNETS.DEPTH {depth}" if depth else ""
        print(f"  MODEL.WEIGHTS {args.output}{depth_opt} " + " ".join(
            f"'{v}'" if " " in v else v for v in TORCHVISION_CONFIG))
    return run_tool(convert, parser.prog)


if __name__ == "__main__":
    sys.exit(main())

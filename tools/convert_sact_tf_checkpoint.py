#!/usr/bin/env python
"""Converts one of the authors' TensorFlow ImageNet checkpoints (mfigurnov/sact:
the ResNet-101 and SACT ResNet-101 of its README; plain, ACT and SACT networks
of any depth) to a sact-det classifier: a .pth and its config beside it.

    tar xzf imagenet_101_sact_5e-3.tar.gz
    python tools/convert_sact_tf_checkpoint.py imagenet_101_sact_5e-3 weights/sact_R101_tau5e-3.pth

The input is a checkpoint directory (with its 'checkpoint' file), a checkpoint
prefix (model.ckpt-NNN) or one of its files. Needs TensorFlow:
pip install "sact-det[tf]". See README, "The authors' models".
"""
import sys

from sact_det.apps.convert_tf import convert_official_checkpoint
from sact_det.apps.tf_variables import listed
from sact_det.utils.cli import ToolParser, output_file, run_tool


def main(argv=None) -> int:
    parser = ToolParser(__doc__)
    parser.add_argument("input", help="TensorFlow checkpoint: directory, prefix, or its .index/.data-* file")
    parser.add_argument("output", type=output_file(".pth", create_parent=True),
                        help="PyTorch checkpoint to write (.pth); its config goes beside it (.yaml)")
    parser.add_argument("--keep-background", action="store_true",
                        help="keep the ImageNet models' output 0 ('background', TF-Slim's convention): 1001 "
                             "classes; by default it is left out and output i is the i-th synset in sorted order")
    args = parser.parse_args(argv)

    def convert():
        conversion, config = convert_official_checkpoint(args.input, args.output, args.keep_background)
        model = conversion.model
        print(f"wrote {len(conversion.state_dict)} tensors to {args.output}: {model.halting} network, units per "
              f"block {list(model.units)}, {conversion.num_classes} classes")
        print(f"left out {len(conversion.ignored)} training-only variable(s)"
              + (f": {listed(conversion.ignored)}" if conversion.ignored else ""))
        print(f"config: {config} (e.g. tools/train_net.py --config-file {config} --eval-only)")
    return run_tool(convert, parser.prog)


if __name__ == "__main__":
    sys.exit(main())

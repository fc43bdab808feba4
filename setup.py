from setuptools import find_packages, setup

setup(
    name="sact-det",
    version="0.1.0",
    description="Spatially Adaptive Computation Time (Figurnov et al., CVPR 2017) "
    "for object detection in Detectron2",
    packages=find_packages(include=["sact_det", "sact_det.*"]),
    # The configs ship inside the package (sact_det.config.get_config_file), so
    # that a plain `pip install .` has them; the repository's configs/ links there.
    package_data={"sact_det": ["configs/*.yaml", "configs/*/*.yaml", "weights/*.pth"]},
    python_requires=">=3.9",
    # torch/torchvision are pinned by the Makefile (torch==2.14.1, torchvision==0.29.1);
    # detectron2 has no PyPI release and is installed by scripts/install_detectron2.sh.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.2",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
        "numpy<2",
        "scipy",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
    ],
    extras_require={
        "dev": ["pytest>=7"],
        # Only tools/convert_sact_tf_checkpoint.py reads TensorFlow checkpoints (the
        # authors' models); 2.21 declares numpy>=1.26, so it installs beside numpy<2.
        "tf": ["tensorflow-cpu==2.21.0"],
    },
)

from sact_det.data.classification import (IMAGENET_SPLITS, SYNTHETIC_CLS_SPLITS, ensure_synthetic_cls,
                                          is_classification_dataset, register_classification_datasets)
from sact_det.data.datasets import (SYNTHETIC_SPLITS, check_datasets_exist, check_num_classes, default_synthetic_root,
                                    ensure_synthetic, model_metadata, register_config_datasets, register_synthetic)
from sact_det.data.synthetic import generate_dataset

__all__ = ["IMAGENET_SPLITS", "SYNTHETIC_CLS_SPLITS", "ensure_synthetic_cls", "is_classification_dataset",
           "register_classification_datasets", "SYNTHETIC_SPLITS", "check_datasets_exist", "check_num_classes",
           "default_synthetic_root", "ensure_synthetic", "model_metadata", "register_config_datasets",
           "register_synthetic", "generate_dataset"]

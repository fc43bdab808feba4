"""Config keys (``add_sact_config``), their validation, every mode list
(:mod:`.modes`) and what ships inside the package: configs (:func:`get_config_file`)
and weights (:func:`get_weights_file`, ``sact_det://`` paths)."""
from sact_det.config.defaults import (add_sact_config, fall_back_to_cpu, get_sact_cfg, is_classifier,
                                      reference_units_per_block, units_per_block, validate_sact_config)
from sact_det.config.model_zoo import get_config_file, get_weights_file
from sact_det.config.modes import (EXECUTIONS, HALTING_PADDINGS, HALTING_TYPES, HEAD_TYPES, SPARSE_EXECUTIONS,
                                   UNIT_TYPES, UNITS_PER_DEPTH)

__all__ = ["add_sact_config", "fall_back_to_cpu", "get_sact_cfg", "is_classifier", "reference_units_per_block",
           "units_per_block", "validate_sact_config", "get_config_file", "get_weights_file", "EXECUTIONS", "HALTING_PADDINGS",
           "HALTING_TYPES", "HEAD_TYPES", "SPARSE_EXECUTIONS", "UNIT_TYPES", "UNITS_PER_DEPTH"]

"""The paper's mechanism, independent of Detectron2: ACT/SACT halting
(Algs. 1-2, eqs. 4-12: :mod:`.act`), the halting branch (eqs. 6, 14:
:mod:`.halting`) and one adaptive block of residual units, masked as in
training (:mod:`.adaptive_stage`)."""
from sact_det.modeling.sact.act import HaltingState
from sact_det.modeling.sact.adaptive_stage import AdaptiveStage, StageOutput, every_unit_evaluated
from sact_det.modeling.sact.halting import HaltingBranch, set_test_halting_offset

__all__ = ["HaltingState", "AdaptiveStage", "StageOutput", "every_unit_evaluated", "HaltingBranch",
           "set_test_halting_offset"]

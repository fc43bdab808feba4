"""Running models: the trainer (:mod:`.trainer`) and its hooks (:mod:`.hooks`),
checkpoint loading (:mod:`.checkpoint`), the predictor (:mod:`.predictor`),
config loading and set-up (:mod:`.defaults`) and ``tools/train_net.py``'s
program (:mod:`.train_net`)."""
from sact_det.engine.checkpoint import SACTCheckpointer
from sact_det.engine.predictor import SACTPredictor
from sact_det.engine.trainer import SACTTrainer, TrainingDivergedError

__all__ = ["SACTCheckpointer", "SACTPredictor", "SACTTrainer", "TrainingDivergedError"]

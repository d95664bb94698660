"""DCL: Dynamic Curriculum Learning for Great Ape Detection in the Wild (Yang, Burghardt & Mirmehdi,
IJCV 2023, arXiv 2205.00275), reproduced as a classification proxy of its student-teacher self-training."""

from papers.great_apes_dcl.data import LabeledUnlabeledDataModule
from papers.great_apes_dcl.module import DCLModule, dcl_loss
from papers.great_apes_dcl.schedules import POLICIES, CurriculumSchedule, Phases, cosine_value, ramp_value

__all__ = [
    "POLICIES",
    "CurriculumSchedule",
    "DCLModule",
    "LabeledUnlabeledDataModule",
    "Phases",
    "cosine_value",
    "dcl_loss",
    "ramp_value",
]

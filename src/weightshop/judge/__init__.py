"""The judge layer: every scorer that turns images into numbers, behind one interface (`judge.base.Judge`).

transfer, training validation and (later) the evaluation harness, quantization drift and serving's smoke check
all call judges from here, so a number means the same wherever it is reported.
"""

from weightshop.judge.base import ADHERENCE, CONCEPT, Job, Judge, JudgeIdentity, comparable, means
from weightshop.judge.agreement import MARGIN_POINTS, agreement, ratios_part
from weightshop.judge.distance import TrainingSetDistance, image_statistics, knn_distance
from weightshop.judge.geometry import GeometryJudge
from weightshop.judge.probe import ProbeScorer, concept_present, other_attribute_accuracy

__all__ = ["ADHERENCE", "CONCEPT", "Job", "Judge", "JudgeIdentity", "ProbeScorer", "comparable", "means", "TrainingSetDistance", "concept_present",
           "image_statistics", "knn_distance", "other_attribute_accuracy", "GeometryJudge", "MARGIN_POINTS", "agreement",
           "ratios_part"]

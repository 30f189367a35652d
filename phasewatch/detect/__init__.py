"""Detectors: the execution-to-planning phase shift and entropy health alarms.

``RunDetector`` is what the monitor uses; the building blocks (CUSUM, Page-Hinkley, the rise
detector, ruptures confirmation, health alarms, the phase state machine) are exported for
users who want to run one on their own series.
"""

from phasewatch.detect.config import DetectionConfig
from phasewatch.detect.confirm import MeanShiftConfirmer, TrendChangeConfirmer
from phasewatch.detect.cusum import Cusum
from phasewatch.detect.health import HealthMonitor
from phasewatch.detect.page_hinkley import PageHinkley
from phasewatch.detect.phase import PhaseStateMachine
from phasewatch.detect.rise import RiseDetector
from phasewatch.detect.robust import NoiseModel, noise_model
from phasewatch.detect.run import RunDetector

__all__ = [
    "Cusum",
    "DetectionConfig",
    "HealthMonitor",
    "MeanShiftConfirmer",
    "NoiseModel",
    "PageHinkley",
    "PhaseStateMachine",
    "RiseDetector",
    "RunDetector",
    "TrendChangeConfirmer",
    "noise_model",
]

"""phasewatch: watch RL fine-tuning of language models for the execution-to-planning shift.

The public API is re-exported here lazily, so ``import phasewatch`` stays cheap (no torch,
no TRL) for the CLI and the ``phasewatch serve`` service; each name is imported on first use.
"""

from __future__ import annotations

from phasewatch._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "Config": "phasewatch.config",
    "StepRecord": "phasewatch.record",
    "CANONICAL_FIELDS": "phasewatch.record",
    "Event": "phasewatch.events",
    "Decision": "phasewatch.events",
    "Observation": "phasewatch.events",
    "DetectorReading": "phasewatch.events",
    # tokens -> labels
    "Lexicon": "phasewatch.lexicon",
    "PlanningLabeler": "phasewatch.labels",
    "Span": "phasewatch.labels",
    "BatchLabels": "phasewatch.labels",
    # labels -> step statistics
    "StepStats": "phasewatch.stats",
    "TokenSums": "phasewatch.stats",
    "token_entropy": "phasewatch.entropy",
    "all_reduce_stats": "phasewatch.dist",
    "broadcast_decision": "phasewatch.dist",
    # detectors
    "RunDetector": "phasewatch.detect",
    "DetectionConfig": "phasewatch.detect",
    # monitor, store, reweighting, replay
    "Monitor": "phasewatch.monitor",
    "Store": "phasewatch.store",
    "ReweightSchedule": "phasewatch.reweight",
    "hicra_advantages": "phasewatch.reweight",
    "replay_file": "phasewatch.replay",
    "plot_run": "phasewatch.plot",
    # exports
    "PrometheusExporter": "phasewatch.exporter",
    "GrafanaAnnotator": "phasewatch.grafana",
    "push_dashboard": "phasewatch.grafana",
    "build_dashboard": "phasewatch.dashboard",
    # the service and its clients
    "MonitorClient": "phasewatch.client",
    "InProcessClient": "phasewatch.client",
    "ClientCounters": "phasewatch.client",
    "client_for": "phasewatch.client",
    "create_app": "phasewatch.server",
    # trainer hooks
    "Watcher": "phasewatch.hooks.torch",
    "WatchResult": "phasewatch.hooks.torch",
    "PhaseWatchGRPOTrainer": "phasewatch.hooks.trl",
    "PhaseWatchMixin": "phasewatch.hooks.trl",
    # strategic-gram mining
    "RolloutWriter": "phasewatch.grams",
    "mine_strategic_grams": "phasewatch.grams",
    "MiningConfig": "phasewatch.grams",
    # the demo (the main job)
    "run_demo": "phasewatch.demo.run",
    "DemoConfig": "phasewatch.demo.run",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

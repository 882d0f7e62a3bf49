"""How the evaluate stage's metrics table names an undefined value, shared by the evaluate and report stages (no
heavy imports: the report reads it too).

A metric that cannot mean anything on an explanation (see ``explainers.metrics.UNDEFINED_REASONS``) gets a row
``undefined:<metric>:<reason>`` with value 1.0 instead of a value, so that it is counted and never averaged. The
metric is one declared in ``tasks.metric_names``."""
from __future__ import annotations

from tasks.metric_names import lookup

UNDEFINED = "undefined:"
NONFINITE_VALUE = "nonfinite_value"        # a NaN / inf result without a known cause (e.g. the model scored NaN)
NONFINITE_SALIENCY = "nonfinite_saliency"  # also the errors table's error_type for such a saliency map


def undefined_metric(metric: str, reason: str) -> str:
    """The metrics-table name of an undefined value: ``undefined:<metric>:<reason>``. Raises ValueError on a
    reason with ':' (it could not be read back) or a metric not declared in ``tasks.metric_names``."""
    if ":" in reason or not reason:
        raise ValueError(f"an undefined value's reason must be a non-empty name without ':', got {reason!r}")
    if lookup(metric) is None:
        raise ValueError(f"metric {metric!r} is not declared in tasks.metric_names")
    return f"{UNDEFINED}{metric}:{reason}"


def parse_undefined(name: str) -> tuple[str, str] | None:
    """``undefined:<metric>:<reason>`` -> (metric, reason); None for a defined metric's name."""
    if not name.startswith(UNDEFINED):
        return None
    metric, reason = name[len(UNDEFINED):].rsplit(":", 1)
    return metric, reason

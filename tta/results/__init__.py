"""Results: typed, versioned objects (:class:`BoundReport`, :class:`AnalysisResult`) and their JSON record.

The types (:mod:`tta.results` re-exports them) are plain data: :func:`tta.fitting.evaluate_bound` returns
a :class:`BoundReport`, an analysis an :class:`AnalysisResult`, whose :meth:`~AnalysisResult.to_dict`
is the body of ``result.json`` (with ``schema_version``) and :meth:`~AnalysisResult.from_dict` reads one
back. :func:`write_json_atomic`, :func:`versions` and :func:`config_hash` write the record of a run.
"""

from tta.results._record import TERM_ADVICE, config_hash, format_result, reading, versions, write_json_atomic
from tta.results._types import SCHEMA_VERSION, AnalysisResult, BoundReport, ClassifierMetrics, ConditionRecord

__all__ = [
    "SCHEMA_VERSION",
    "TERM_ADVICE",
    "AnalysisResult",
    "BoundReport",
    "ClassifierMetrics",
    "ConditionRecord",
    "config_hash",
    "format_result",
    "reading",
    "versions",
    "write_json_atomic",
]

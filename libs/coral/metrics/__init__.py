"""Metrics derived from conversation records: per conversation, social behaviour, and over a whole run.

``conversation_metrics(record)`` gives one conversation's flat metric dict; ``aggregate(records)`` averages it
over a run; ``write_metrics(root)`` recomputes ``metrics.json`` from a results store and ``summary_table``
renders it. Every function takes ``compat=True`` for the reference implementation's definitions.
"""

from coral.metrics.aggregate import aggregate, summary_table, write_metrics
from coral.metrics.conversation import conversation_metrics

__all__ = ["aggregate", "conversation_metrics", "summary_table", "write_metrics"]

"""``python -m trioq demo``: the seed workloads end to end on an embedded cluster."""

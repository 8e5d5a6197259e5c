"""Textbook-quality data: sources -> annotate -> classify -> filter -> dedup -> decontaminate -> shards.

Every stage is a datatrove pipeline step (or a short list of them), so the same code runs under
`LocalPipelineExecutor` here and `SlurmPipelineExecutor` / `RayPipelineExecutor` on a cluster.
Documents are datatrove `Document(text, id, metadata)` rows stored as jsonl.gz between stages.
"""


class DataError(ValueError):
    """Bad data input: the message is one line naming the file, field or value."""

"""What a streaming query's checkpoint tells, and how a full one is retired.

- ``names``: stable checkpoint folder names and the query id used as the Delta transaction app id.
- ``source_log``: the files Spark's file source assigned to each batch (its checkpoint log).
- ``rotation``: fresh checkpoints for a stream whose scored files leave the folder.
"""

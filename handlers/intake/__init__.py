"""Intake and work: claim-once intake and the worker lanes (``service``), the persisted event log
(``eventlog``), which upload an event names and its arrival record (``blob_created``), labeling
exports into human labels (``label_exports``)."""

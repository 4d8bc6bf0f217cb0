"""The local runtime: what runs lakesight on one machine with no cloud.

- ``stack``: Azurite (blob storage) from the project's npm install; the Java check.
- ``supervisor``: ``lakesight up``: one process keeping every local service running.
- ``demo``: ``lakesight demo``: the whole story on the digits, driven through ``lakesight`` processes.
- ``sample_data``: scikit-learn's digits and synthetic shapes with drift knobs.

It drives the domain packages only through processes (``infra.processes.lakesight_argv``),
never by importing them.
"""

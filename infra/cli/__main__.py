"""``python -m infra.cli``: the ``lakesight`` command run by this interpreter (what child processes use)."""

from infra.cli import main

main()

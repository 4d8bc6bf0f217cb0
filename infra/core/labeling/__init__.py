"""Labeling: which unsure images go to humans (``strategies``), and the hand-off that sends them (``handoff``)."""

from infra.core.labeling.handoff import HandOff, hand_off, queue_state, sampled

__all__ = ["HandOff", "hand_off", "queue_state", "sampled"]

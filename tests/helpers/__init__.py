"""Builders shared by tests: images, lake rows, events."""

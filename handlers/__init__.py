"""Event Grid webhook service: blob events, labeling exports, drift, retraining."""

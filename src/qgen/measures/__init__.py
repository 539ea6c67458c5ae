"""Flatness measures of the paper (App. A): bounds, searches, and the measurement of a trained model."""

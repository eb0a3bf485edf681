"""Globus Compute functions the flow calls: thin, JSON in and out."""

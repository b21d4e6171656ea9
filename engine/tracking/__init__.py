"""Keeping each instance's identity across frames."""

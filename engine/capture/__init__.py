"""Frame sources and the capture thread."""

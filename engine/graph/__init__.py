"""The engine's graphs: pre-processing, networks and post-processing in one ONNX per preset."""

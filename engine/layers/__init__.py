"""Per-output layers: each kind decodes itself from the graph outputs, draws, serialises and is scored."""

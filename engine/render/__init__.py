"""Drawing results over frames."""

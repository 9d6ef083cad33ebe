"""The engine every method stands on: targets, layers, capture, the result and the registry."""

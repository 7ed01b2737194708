"""The evaluation layer: the round trip, metrics, LPIPS, images and the fixed-point error statistics.

It imports the core only, never the workflow (tests/test_layers.py); this file imports none of its modules."""

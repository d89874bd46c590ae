"""Watching training: TensorBoard event files (tensorboard.py), a progress line on a terminal
(progress.py) and the divergence guard (divergence.py).  See docs/monitoring.md."""

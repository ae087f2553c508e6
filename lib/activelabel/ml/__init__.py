"""Machine learning: networks, pre-processing, inference, training, uncertainty and metrics."""

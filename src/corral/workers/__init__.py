"""Where models run: engines that load models and compute batches."""

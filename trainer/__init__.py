"""The MSF-SER model, data loading from the cache and the training loop."""

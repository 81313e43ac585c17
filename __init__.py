"""msf: offline feature extraction, caching and training for MSF-SER speech emotion recognition."""

__version__ = "0.1.0"

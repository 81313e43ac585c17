"""Corpus readers: generic manifests, MSP-Podcast, IEMOCAP and the synthetic demo corpus."""

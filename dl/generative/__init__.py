"""Generative models: GANs, autoencoders and VAEs; Frechet distance; anomaly scores."""

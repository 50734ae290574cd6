"""The denoising network (DiT) and the diffusion process it is trained and sampled with."""

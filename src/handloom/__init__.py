"""The handloom library: hand datasets to a reference-to-target hand diffusion model and its report."""

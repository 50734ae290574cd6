"""Training: the Lightning module (module.py) and the data it reads."""

"""mbmpo-ray: Model-Based Meta-Policy Optimization (Clavera et al. 2018) on Ray RLlib."""

__version__ = "0.1.0"

"""saex: sparse dictionary learning for interpretable features in language models.

Implements Cunningham, Ewart, Riggs, Huben & Sharkey (2023), "Sparse Autoencoders Find Highly
Interpretable Features in Language Models" (arXiv 2309.08600), end to end on real models.
"""

__version__ = "0.1.0"

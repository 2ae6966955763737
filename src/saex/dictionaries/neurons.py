"""The default basis as a dictionary: paper §3.2 baseline (a), "Identity ReLU" in Figure 2.

Each feature is one coordinate of the activation with negative values clipped: "for the random directions
and for the default basis in the residual stream, we replace negative activations with zeros so that all
feature activations are nonnegative" (§3.2). At ``mlp.hook_post`` the features are the MLP's own neurons.
As in the paper's code (``IdentityReLU``) there is no ± duplication, so the negative half of each
coordinate is lost and the reconstruction is only ``ReLU(x)``.
"""

from __future__ import annotations

import torch

from saex.dictionaries.sae import SAE


def neurons(d_in: int, metadata: dict | None = None) -> SAE:
    eye_DD = torch.eye(d_in)
    zeros_D = torch.zeros(d_in)
    return SAE(
        eye_DD, eye_DD.clone(), zeros_D, zeros_D.clone(), "standard", apply_b_dec_to_input=False, metadata=metadata
    )

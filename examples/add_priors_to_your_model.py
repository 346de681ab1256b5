"""Add QGNet's two region maps to your own few-shot segmentation model (~20 lines).

Any model with a query / support feature extractor can use them as extra input
channels of its decoder: the *guided* map (support-conditioned, PFENet's prior)
and the *prior* map (query-only, from a frozen self-supervised encoder).
"""

import argparse

import torch
import torch.nn.functional as F

from fewshot_priors import guided_region_map, prior_region_map

# no flags: --help shows what the script does, anything else is refused
argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

B, K, C, h, w = 2, 5, 256, 30, 30
query_feat = torch.randn(B, C, h, w)            # your model's high-level query features
support_feat = torch.randn(B, K, C, h, w)       # ... and support features (K shots)
support_mask = (torch.rand(B, K, 120, 120) > 0.5).float()  # masks at any resolution
prior_feat = torch.randn(B, C, 15, 15)          # query features of a frozen self-supervised encoder

guided = guided_region_map(query_feat, support_feat, support_mask)   # B, 1, h, w in [0, 1]
prior = prior_region_map(query_feat, prior_feat)                     # B, 1, h, w in [0, 1] (low on objects)

# feed them to your decoder next to the query features (resize to its resolution first)
mid = torch.randn(B, 256, 60, 60)
maps = F.interpolate(torch.cat([guided, prior], 1), size=mid.shape[-2:], mode="bilinear", align_corners=True)
decoder_input = torch.cat([mid, maps], dim=1)   # B, 258, 60, 60
print("guided", tuple(guided.shape), "prior", tuple(prior.shape), "decoder input", tuple(decoder_input.shape))

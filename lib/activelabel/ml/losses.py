"""The training loss: nnU-Net's Dice + cross-entropy, blind to voxels nobody annotated."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from activelabel.labelmap import NOT_ANNOTATED


class PartialDiceCELoss(nn.Module):
    """Soft Dice over the foreground channels, pooled over the batch, plus cross-entropy.

    Voxels whose target is :data:`~activelabel.labelmap.NOT_ANNOTATED` (partial labels) count in
    neither term: cross-entropy ignores them and both the probabilities and the one-hot target
    are zeroed there before the Dice.  On fully annotated targets this equals MONAI's
    ``DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)``.

    Inputs: logits ``(B, C, *spatial)`` and targets ``(B, 1, *spatial)`` of channel indices.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background=False, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
            raise ValueError(f"target must be (B, 1, *{tuple(logits.shape[2:])}), got {tuple(target.shape)}")
        target = target.long()
        annotated = target != NOT_ANNOTATED
        if not bool(annotated.any()):
            return logits.sum() * 0.0  # nothing annotated in this batch: no gradient, no NaN
        classes = torch.where(annotated, target, torch.zeros_like(target))
        mask = annotated.to(logits.dtype)
        probabilities = torch.softmax(logits, dim=1) * mask
        one_hot = F.one_hot(classes[:, 0], num_classes=logits.shape[1]).movedim(-1, 1).to(logits.dtype) * mask
        cross_entropy = F.cross_entropy(logits, target[:, 0], ignore_index=NOT_ANNOTATED)
        return self.dice(probabilities, one_hot) + cross_entropy

"""Hidden-state objectives: compare the states of real tokens, token by token.

``student`` is ``[B, T, D_s]``, ``teacher`` ``[B, T, D_t]``, ``mask`` ``[B, T]`` (true
for real tokens); ``P`` is the projection (identity if None), applied to the
real tokens only, in the model's precision; the comparison runs in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .token_mean import TokenMean, as_float32, per_example

Projection = Callable[[torch.Tensor], torch.Tensor]


def real_token_states(
    name: str,
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (projected) student and the teacher states of the real tokens, ``[N, D_t]``,
    in float32."""
    if student.shape[:2] != teacher.shape[:2] or mask.shape != student.shape[:2]:
        raise ValueError(
            f'{name}: shapes disagree: student {tuple(student.shape)}, '
            f'teacher {tuple(teacher.shape)}, mask {tuple(mask.shape)}'
        )
    s = student[mask]
    if projection is not None:
        s = projection(s)
    s, t = as_float32(s), as_float32(teacher[mask])
    if s.size(-1) != t.size(-1):
        raise ValueError(
            f'{name}: student width {s.size(-1)} != teacher width {t.size(-1)}; '
            'a projection is needed'
        )
    return s, t


def masked_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """Masked mean squared error between hidden states::

    loss = sum_{b,t: mask} mean_d (P(h_S[b,t]) - h_T[b,t])_d^2 / sum(mask)
    """
    s, t = real_token_states('masked_mse', student, teacher, mask, projection)
    per_token = F.mse_loss(s, t, reduction='none').mean(dim=-1)
    return per_example(per_token, mask)


def cosine_embedding_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """DistilBERT's cosine loss: align the directions of the hidden states::

        loss = sum_{b,t: mask} (1 - cos(P(h_S[b,t]), h_T[b,t])) / sum(mask)

    ``cos(x, y) = x.y / max(|x| |y|, 1e-8)`` (``torch.nn.CosineEmbeddingLoss`` with
    target 1, as DistilBERT uses). In ``[0, 2]``; blind to the states' norms.
    """
    s, t = real_token_states(
        'cosine_embedding_loss', student, teacher, mask, projection
    )
    per_token = 1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return per_example(per_token, mask)


def normalized_state_mse(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    projection: Projection | None = None,
) -> TokenMean:
    """Patient KD's loss: squared distance between L2-normalised hidden states.

    With ``u = x / max(|x|, 1e-12)``::

        loss = sum_{b,t: mask} sum_d (u(P(h_S[b,t])) - u(h_T[b,t]))_d^2 / sum(mask)

    Summed over dims as in the paper (Sun et al. 2019, ``||.||_2^2``), so each token
    costs ``2 - 2 cos`` (in ``[0, 4]``), whatever the width. Patient KD applies it
    to the [CLS] state only; here it covers every real token.
    """
    s, t = real_token_states('normalized_state_mse', student, teacher, mask, projection)
    per_token = (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(dim=-1)
    return per_example(per_token, mask)

"""What the teachers give a training step: captured states and output logits.

Several teachers (``--teacher-model a,b --teacher-weights 0.7,0.3``) share a
vocabulary; their outputs are mixed. One of them (``--intermediate-teacher``)
also provides the captured states of the intermediate terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .capture import capture_states
from .objectives import objective
from .output_layer import decoder_states
from .plan import DistillPlan, DistillTerm, needs_decoder
from .teacher import Teacher


def mix_logits(
    outputs: list[torch.Tensor],
    weights: list[float],
    temperature: float,
    probabilities: bool = True,
) -> torch.Tensor:
    """One set of ``[B, T, V]`` logits standing for several teachers (float32).

    With ``probabilities``: ``T * log(sum_i w_i softmax(z_i / T))``, whose tempered
    softmax is the weighted average of the teachers' distributions (what
    divergences compare). Otherwise the weighted average of the raw logits,
    ``sum_i w_i z_i`` (what ``logit_mse`` compares). Teachers of weight 0 are
    left out; one teacher's logits are returned as they are.
    """
    kept = [(w, z) for w, z in zip(weights, outputs, strict=True) if w > 0]
    if len(kept) == 1:
        return kept[0][1]
    if not probabilities:
        return sum(w * z.float() for w, z in kept)
    log_mix = torch.logsumexp(
        torch.stack(
            [math.log(w) + F.log_softmax(z.float() / temperature, -1) for w, z in kept]
        ),
        dim=0,
    )
    return log_mix * temperature


@dataclass
class TeacherOutputs:
    """The teachers' decoder states before their output layers (``--fused-prediction``):
    their logits are made a few rows at a time (:meth:`logits`), never all at once.

    ``states[i]`` is teacher ``i``'s ``[N, D_i]`` (the real label tokens' rows, in
    the teacher's dtype), ``layers[i]`` its own ``output()``.
    """

    states: list[torch.Tensor]
    layers: list[Any]
    weights: list[float]
    probabilities: bool

    def rows(self, mask: torch.Tensor) -> TeacherOutputs:
        """The same, for the ``[B, T]`` states' rows where ``mask`` is true."""
        return TeacherOutputs(
            [s[mask] for s in self.states],
            self.layers,
            self.weights,
            self.probabilities,
        )

    @torch.no_grad()
    def logits(
        self, start: int, end: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:end`` of the mixed logits of :func:`mix_logits` and their argmax
        (what :meth:`TeacherEnsemble.targets` gives for the whole batch)."""
        kept = [
            (w, layer, s)
            for w, layer, s in zip(self.weights, self.layers, self.states, strict=True)
            if w > 0
        ]
        weights = [w for w, _, _ in kept]
        outputs = [layer(s[None, start:end])[0] for _, layer, s in kept]
        logits = mix_logits(outputs, weights, temperature, self.probabilities)
        tokens = mix_logits(outputs, weights, 1.0, True).argmax(dim=-1)
        return logits, tokens


@dataclass
class TeacherEnsemble:
    """The frozen teachers of a run, their weights and the intermediate teacher."""

    teachers: list[Teacher]
    weights: list[float]
    intermediate: int = 0

    @property
    def main(self) -> Teacher:
        """The teacher that intermediate terms, layer maps and options come from."""
        return self.teachers[self.intermediate]

    @torch.no_grad()
    def targets(
        self,
        model_input: tuple,
        encoder_input: tuple,
        labels: torch.Tensor,
        plan: DistillPlan,
        terms: tuple[DistillTerm, ...],
        temperature: float,
        encoder_states: Any = None,
        fused: bool = False,
    ) -> tuple[dict, tuple[torch.Tensor, torch.Tensor] | TeacherOutputs | None]:
        """Run the teachers (no gradients) for the active ``terms``.

        Returns the intermediate teacher's captured states and, when the
        prediction term is active or a term needs the decoder, ``(logits,
        tokens)``: the logits mixed for the prediction objective
        (:func:`mix_logits`) and their argmax. ``encoder_states`` (a shared
        encoder's output) replaces the intermediate teacher's encoding. With
        ``fused``, the teachers stop before their output layers and
        :class:`TeacherOutputs` stands for ``(logits, tokens)``.
        """
        prediction = next((t for t in terms if t.on_logits), None)
        module_points = [
            p.teacher for t in terms for p in t.pairs if p.teacher.is_module
        ]
        need_decoder = needs_decoder(terms)
        extra = {}
        if encoder_states is not None:
            extra['prev_enc'] = tuple(
                s.detach() if torch.is_tensor(s) else s for s in encoder_states
            )
        outputs, weights, states, layers = [], [], {}, []

        def run(model, **kwargs) -> None:  # noqa: ANN001
            if not fused:
                outputs.append(model(*model_input, ys=labels, **kwargs)[0])
                return
            with decoder_states(model):
                outputs.append(model(*model_input, ys=labels, **kwargs)[0])
            layers.append(model.output)

        for i, teacher in enumerate(self.teachers):
            model = teacher.model
            if i == self.intermediate and module_points:
                with capture_states(
                    model, module_points, clone=plan.cloned.get('teacher', ())
                ) as captured:
                    if need_decoder:
                        run(model, **extra)
                        weights.append(self.weights[i])
                    else:
                        model.encoder(*encoder_input)
                states = captured
            elif prediction is not None:
                run(model, **(extra if i == self.intermediate else {}))
                weights.append(self.weights[i])
        if not outputs:
            return states, None
        probabilities = (
            prediction is None or objective(prediction.pairs[0].objective).probabilities
        )
        if fused:
            return states, TeacherOutputs(outputs, layers, weights, probabilities)
        logits = mix_logits(outputs, weights, temperature, probabilities)
        tokens = mix_logits(outputs, weights, 1.0, True).argmax(dim=-1)
        return states, (logits, tokens)

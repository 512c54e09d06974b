"""What a student's checkpoint holds beyond ParlAI's: its own dictionary file, the
names of its optimised parameters (to strip projections exactly), TAID's
schedule state, and tolerance for projections that come and go between runs.
"""

from __future__ import annotations

import os
from typing import Any

import parlai.utils.logging as logging
import torch

from ..model_files import (
    OPTIMIZER_PARAM_NAMES,
    PROJECTION_PREFIX,
    write_dictionary,
)
from ..parallel.ddp import unwrap_model

#: Checkpoint key of TAID's interpolation schedule state.
INTERPOLATION_STATE = 'distill_interpolation'


class StudentCheckpointMixin:
    """ParlAI's save and load hooks for distillation students (needs
    ``self.distill_plan``)."""

    @property
    def _student_model(self) -> torch.nn.Module:
        """The student itself, also when ParlAI wrapped it in DistributedDataParallel."""
        return unwrap_model(self.model)

    def save(self, path: str | None = None) -> None:
        """Save as ParlAI does, and make sure ``MODEL.dict`` is this student's.

        ParlAI keeps an existing ``MODEL.dict``; one left by an earlier run (e.g.
        built from the task data) would silently give the student the wrong
        vocabulary, so it is rewritten whenever it differs.
        """
        super().save(path)
        path = self.opt.get('model_file') if path is None else path
        if path and hasattr(self, 'dict'):
            existed = os.path.isfile(path + '.dict')
            if write_dictionary(self.dict, path + '.dict') and existed:
                logging.warning(
                    f"Replaced {path}.dict: it was not the student's dictionary"
                )

    def state_dict(self) -> dict[str, Any]:
        states = super().state_dict()
        if hasattr(self, 'optimizer') and 'model' in states:
            states[OPTIMIZER_PARAM_NAMES] = [
                name
                for name, p in self._student_model.named_parameters()
                if p.requires_grad
            ]
        if self.distill_plan.interpolation is not None:
            states[INTERPOLATION_STATE] = self.distill_plan.interpolation.state_dict()
        return states

    def load(self, path: str) -> dict[str, Any]:
        states = super().load(path)
        schedule = self.distill_plan.interpolation
        if schedule is not None and states and INTERPOLATION_STATE in states:
            schedule.load_state_dict(states[INTERPOLATION_STATE])
        return states

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint; projections the current run does not use are dropped.

        Changing terms between runs (e.g. intermediate terms first, then
        predictions only) changes the set of projections; those missing from the
        checkpoint keep their fresh initialisation.
        """
        current = self._student_model.state_dict()
        state_dict = {
            k: v
            for k, v in state_dict.items()
            if not k.startswith(PROJECTION_PREFIX) or k in current
        }
        for key, value in current.items():
            if key.startswith(PROJECTION_PREFIX) and key not in state_dict:
                state_dict[key] = value
        super().load_state_dict(state_dict)

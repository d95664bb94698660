"""An exponential-moving-average (EMA) copy of a module: the teacher of Mean Teacher and the evaluation model
of FixMatch-style training.

Protocols:
  * Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017 (EMA of the student's weights;
    their PyTorch code ramps the decay as ``min(decay, 1 - 1 / (global_step + 1))``);
  * Sohn et al., "FixMatch", NeurIPS 2020, and its common PyTorch ports (kekmodel/FixMatch-pytorch,
    USB/TorchSSL): parameters are averaged, BatchNorm running statistics are *copied* from the student;
  * ``tf.train.ExponentialMovingAverage`` with ``num_updates``: ``min(decay, (1 + n) / (10 + n))``.

Buffers. The default, ``buffers="copy"``, copies the student's buffers (BatchNorm running mean/var and
``num_batches_tracked``) at every update, as FixMatch ports do: the student's running statistics are already
a moving average, and averaging them a second time only adds lag. ``"average"`` averages floating buffers
like parameters (timm's ``ModelEmaV2``); ``"keep"`` leaves the teacher's buffers alone so that its own
forward passes in train mode maintain them, as the Mean Teacher PyTorch code does (pair with
``eval_mode=False``). Integer buffers are always copied under ``"average"``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["EMATeacher"]

BufferMode = Literal["copy", "average", "keep"]
Warmup = Literal["none", "mean_teacher", "num_updates"]


class EMATeacher(nn.Module):
    """An EMA copy of ``model``: ``teacher <- d * teacher + (1 - d) * student`` at every ``update(student)``.

    The copy holds no gradients and its forward runs under ``torch.no_grad``. With ``eval_mode=True`` (the
    default) the copy always stays in eval mode (dropout off, BatchNorm uses running statistics) even when
    a parent module calls ``.train()``; set ``eval_mode=False`` for Mean Teacher's noisy teacher. The number
    of updates is a buffer, so ``state_dict()`` checkpoints the copy and the warm-up position together.

    Args:
        model: the student to copy (deep-copied at construction; the student is not modified).
        decay: the EMA decay ``d`` in [0, 1]; 0 makes the teacher a copy of the student.
        warmup: ``"none"`` (constant ``d``), ``"mean_teacher"`` (``min(d, 1 - 1 / (n + 2))`` with ``n`` the
            updates done before this one, i.e. Tarvainen & Valpola's ``global_step = n + 1``) or
            ``"num_updates"`` (``min(d, (1 + n) / (10 + n))``, TensorFlow's ExponentialMovingAverage).
        buffers: how buffers follow the student: ``"copy"``, ``"average"`` or ``"keep"`` (module docstring).
        eval_mode: keep the copy in eval mode whatever mode its parent is in.
    """

    num_updates: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup: Warmup = "none",
        buffers: BufferMode = "copy",
        eval_mode: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"EMATeacher needs an nn.Module, got {type(model).__name__}.")
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be a number in [0, 1], got {decay!r}.")
        if warmup not in ("none", "mean_teacher", "num_updates"):
            raise ValueError(f"warmup must be 'none', 'mean_teacher' or 'num_updates', got {warmup!r}.")
        if buffers not in ("copy", "average", "keep"):
            raise ValueError(f"buffers must be 'copy', 'average' or 'keep', got {buffers!r}.")
        self.decay = float(decay)
        self.warmup = warmup
        self.buffer_mode = buffers
        self.eval_mode = eval_mode
        self.module = copy.deepcopy(model)
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # Host-side mirror of num_updates so that warm-up does not sync the device every step; a loaded
        # state_dict invalidates it.
        self._host_updates: int | None = 0
        self.register_load_state_dict_post_hook(EMATeacher._invalidate_host_updates)
        self.train(self.training)

    @staticmethod
    def _invalidate_host_updates(module: nn.Module, incompatible_keys: Any) -> None:
        module._host_updates = None

    def train(self, mode: bool = True) -> EMATeacher:
        """Set the mode; the copy itself stays in eval mode when ``eval_mode`` is set."""
        super().train(mode)
        self.module.train(mode and not self.eval_mode)
        return self

    def current_decay(self) -> float:
        """The decay the next ``update`` will use (after warm-up)."""
        if self.warmup == "none":
            return self.decay
        if self._host_updates is None:
            self._host_updates = int(self.num_updates.item())
        n = self._host_updates
        if self.warmup == "mean_teacher":
            return min(self.decay, 1.0 - 1.0 / (n + 2))
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """Move the copy towards ``student`` by one EMA step; returns the decay used."""
        decay = self.current_decay()
        student_params = dict(student.named_parameters())
        teacher_params = dict(self.module.named_parameters())
        self._check_same_keys("parameters", teacher_params, student_params)
        for name, ema in teacher_params.items():
            src = student_params[name].detach().to(device=ema.device, dtype=ema.dtype)
            ema.lerp_(src, 1.0 - decay)

        if self.buffer_mode != "keep":
            student_buffers = dict(student.named_buffers())
            teacher_buffers = dict(self.module.named_buffers())
            self._check_same_keys("buffers", teacher_buffers, student_buffers)
            for name, ema in teacher_buffers.items():
                src = student_buffers[name].detach().to(device=ema.device, dtype=ema.dtype)
                if self.buffer_mode == "average" and ema.is_floating_point():
                    ema.lerp_(src, 1.0 - decay)
                else:
                    ema.copy_(src)
        self.num_updates += 1
        if self._host_updates is not None:
            self._host_updates += 1
        return decay

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The copy's forward pass, without gradients."""
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, warmup={self.warmup!r}, buffers={self.buffer_mode!r}"

    @staticmethod
    def _check_same_keys(
        kind: str, teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor]
    ) -> None:
        if teacher.keys() != student.keys():
            missing = sorted(teacher.keys() - student.keys())[:5]
            extra = sorted(student.keys() - teacher.keys())[:5]
            raise ValueError(
                f"student {kind} do not match the EMA copy (missing in student: {missing}, unexpected: "
                f"{extra}); update() needs the same architecture the teacher was built from."
            )
        for name, tensor in teacher.items():
            if tensor.shape != student[name].shape:
                raise ValueError(
                    f"student {kind[:-1]} {name!r} has shape {tuple(student[name].shape)}, the EMA copy has "
                    f"{tuple(tensor.shape)}."
                )

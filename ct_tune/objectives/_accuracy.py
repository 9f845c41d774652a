"""Clean accuracy of the model's own head: top-1, and top-5 where there are more than 5 classes."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from ct_tune._specs import StrictSpec
from ct_tune.objectives._base import Direction, ObjectiveResult, ReportFn, fraction, per_class_accuracy
from ct_tune.objectives._target import EvalData, EvalTarget

import torch
from pydantic import Field


class AccuracyObjective(StrictSpec):
    """Top-1 accuracy on the val set (the value), with top-5 and per-class accuracy as details."""

    name: Literal["accuracy"] = "accuracy"
    direction: Direction = "maximize"
    needs_train: ClassVar[bool] = False
    top_k: int = Field(default=5, gt=0)

    def evaluate(self, target: EvalTarget, data: EvalData, report: ReportFn | None = None) -> ObjectiveResult:
        start = time.perf_counter()
        clock_start = target.clock.seconds
        x, y = data.val_x, data.val_y
        k = min(self.top_k, target.num_classes)
        hit1 = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        hitk = torch.zeros_like(hit1)
        seen = [0, 0]  # samples, top-1 hits (a running count for pruning)

        def step(batch: slice) -> None:
            with torch.inference_mode(), target.clock.measure():
                logits = target.logits(x[batch])
            top = logits.topk(k, dim=1).indices
            truth = y[batch].unsqueeze(1)
            hit1[batch] = top[:, 0] == truth[:, 0]
            hitk[batch] = (top == truth).any(dim=1)
            seen[0] = batch.stop
            if report is not None:
                seen[1] += int(hit1[batch].sum())
                report(seen[1] / seen[0], seen[0])

        target.for_batches(len(y), step)
        return self._result(hit1, hitk, y, target, time.perf_counter() - start, target.clock.seconds - clock_start)

    def evaluate_many(self, target: EvalTarget, data: EvalData, profiles: int) -> list[ObjectiveResult]:
        """One result per profile of a net steered with ``profiles`` at once (``update_batched``);
        every forward pass scores all of them. Times are the batch's, shared equally."""
        start = time.perf_counter()
        clock_start = target.clock.seconds
        x, y = data.val_x, data.val_y
        k = min(self.top_k, target.num_classes)
        hit1 = torch.zeros(profiles, len(y), dtype=torch.bool, device=y.device)
        hitk = torch.zeros_like(hit1)

        def step(batch: slice) -> None:
            with torch.inference_mode(), target.clock.measure():
                logits = target.logits_stacked(x[batch], profiles)
            top = logits.topk(k, dim=2).indices
            truth = y[batch].view(1, -1, 1)
            hit1[:, batch] = top[..., 0] == truth[..., 0]
            hitk[:, batch] = (top == truth).any(dim=2)

        target.for_batches(len(y), step, copies=profiles)
        seconds = (time.perf_counter() - start) / profiles
        compute = (target.clock.seconds - clock_start) / profiles
        return [self._result(hit1[i], hitk[i], y, target, seconds, compute) for i in range(profiles)]

    def _result(
        self,
        hit1: torch.Tensor,
        hitk: torch.Tensor,
        y: torch.Tensor,
        target: EvalTarget,
        seconds: float,
        compute_seconds: float,
    ) -> ObjectiveResult:
        k = min(self.top_k, target.num_classes)
        top1 = fraction(hit1)
        details = {"top1": top1, "n": len(y), "per_class": per_class_accuracy(hit1, y, target.num_classes)}
        if target.num_classes > 5:
            details[f"top{k}"] = fraction(hitk)
        return ObjectiveResult(self.name, top1, details, seconds, compute_seconds, correct=hit1)

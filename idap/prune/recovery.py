"""Training loops: dense training and distillation recovery (spec §4).

Recovery loss = CE(student, y) + λ_feat · Σ_taps L1(adapter(f_s), f_t) + λ_kd · τ² · KL(teacher ‖ student at τ).
A language model's (N, T, V) token logits with (N, T) next-token targets: CE over all tokens and KL over the
vocabulary of each token (``batchmean`` over the N·T tokens), so the loss is per token as for one sample.
Taps are the first, middle and last activation modules of the student; a 1x1 conv (maps) or linear
(tokens/vectors) adapter bridges widths that pruning changed. Budgets are optimizer steps, batches are
drawn from in-memory tensors with a seeded generator: the same seed gives the same model.

Under a torch.distributed process group of more than one rank both loops run data-parallel at the same global
batch (each rank its slice of the single process's batch, DDP, batch-norm statistics as idap.prune.parallel
says); with an executor handed in by the edge (``parallel.use_executor``) a long call is run on its workers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from idap.measure.metrics import is_streamed
from idap.measure.tokens import token_loss
from idap.prune import parallel
from idap.prune.activations import FeatureTaps, activation_modules
from idap.prune.config import RecoveryConfig
from idap.prune.parallel import average_grads, mean_over_ranks, prepare, shard, world


def select_taps(student: nn.Module, teacher: nn.Module | None = None) -> list[str]:
    """First, middle and last activation modules of the student that the teacher also has."""
    teacher_names = set(dict(teacher.named_modules())) if teacher is not None else None
    names = [n for n in activation_modules(student) if teacher_names is None or n in teacher_names]
    if not names:
        return []
    picks = [names[0], names[len(names) // 2], names[-1]]
    return list(dict.fromkeys(picks))


def augment_batch(x: Tensor, gen: torch.Generator, pad: int = 2) -> Tensor:
    """Random per-sample translation by up to ``pad`` pixels (zero fill), as tensor ops."""
    if x.dim() != 4 or pad <= 0:
        return x
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + oy[:, None])[:, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + ox[:, None])[:, None, :]
    idx = torch.arange(b, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2).contiguous()


class _Batches:
    """Endless seeded shuffling over in-memory tensors, or over a streamed split (``idap.data.streaming``): then
    each epoch is one seeded DataLoader pass, augmented by the split's training transform."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int, device: torch.device, augment: bool):
        self.rank, self.world = world()  # a rank keeps its slice of the single process's global batch
        if len(x) == 0:
            raise ValueError("the training split is empty")
        if len(x) != len(y):
            raise ValueError(f"x and y differ in length: {len(x)} samples vs {len(y)} labels")
        self.x, self.y, self.device, self.augment = x, y, device, augment
        self.batch_size = min(batch_size, len(x))
        parallel.shard_size(self.batch_size, self.world)  # (raises when the batch does not split evenly)
        self.gen = torch.Generator().manual_seed(seed)
        self._stream = None
        if is_streamed(x):
            return
        self._order, self._pos = torch.randperm(len(x), generator=self.gen), 0

    def _next_streamed(self) -> tuple[Tensor, Tensor]:
        for _ in range(2):  # at most one epoch boundary per batch
            if self._stream is None:
                epoch_seed = int(torch.randint(2**62, (1,), generator=self.gen))
                self._stream = iter(self.x.batches(self.batch_size, shuffle=True, seed=epoch_seed,
                                                   augment=self.augment, drop_last=True))
            try:
                xb, yb = next(self._stream)
            except StopIteration:
                self._stream = None
                continue
            return self._local(xb, yb)
        raise ValueError(f"the training split {self.x!r} yields no full batch of {self.batch_size}")

    def next(self) -> tuple[Tensor, Tensor]:
        if is_streamed(self.x):
            return self._next_streamed()
        if self._pos + self.batch_size > len(self._order):
            self._order, self._pos = torch.randperm(len(self.x), generator=self.gen), 0
        idx = self._order[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        xb, yb = self.x[idx], self.y[idx]
        if self.augment:
            xb = augment_batch(xb, self.gen)
        return self._local(xb, yb)

    def _local(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        if self.world > 1:
            xb, yb = shard(xb, self.rank, self.world), shard(yb, self.rank, self.world)
        return xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)


def _adapter(student_feat: Tensor, teacher_feat: Tensor) -> nn.Module:
    """Bridges a tap whose width pruning changed: the axis where student and teacher differ is the channel axis
    (1 for conv maps; last for tokens and channels-last maps, e.g. ConvNeXt's MLP)."""
    s, t = student_feat.shape, teacher_feat.shape
    differ = [i for i in range(1, len(s)) if s[i] != t[i]]
    if not differ:
        return nn.Identity()
    axis = differ[0]
    if axis == 1 and student_feat.dim() == 4:
        return nn.Conv2d(s[1], t[1], kernel_size=1, bias=False)
    if axis == len(s) - 1 or student_feat.dim() == 2:
        return nn.Linear(s[-1], t[-1], bias=False)
    raise ValueError(f"cannot bridge feature shapes {tuple(s)} -> {tuple(t)} at a distillation tap")


def _cosine(step: int, total: int, base_lr: float) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / max(1, total)))


@dataclass
class RecoveryStats:
    steps: int
    final_loss: float
    taps: list[str]


def recover(
    student: nn.Module,
    teacher: nn.Module | None,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    config: RecoveryConfig,
    seed: int,
    device: torch.device,
    lr: float | None = None,
    schedule: str = "constant",
    progress: bool = False,
    desc: str = "recovery",
    on_step: Callable[[int], None] | None = None,
    horizon: Callable[[int], int] | None = None,
) -> RecoveryStats:
    """Distillation fine-tuning of ``student`` for ``steps`` optimizer steps (in place).

    Args:
        on_step: called with the step's index after each optimizer step (the time plan times them).
        horizon: called with the steps done after each optimizer step; returns how many the loop may take in all
            (clamped to [done, ``steps``]; the cosine schedule then decays over the new length). A time budget
            uses it to shorten a fine-tune whose steps got slower than planned. In-process runs only: a call
            handed to an executor's workers runs its ``steps``.
    """
    if steps <= 0:
        return RecoveryStats(0, float("nan"), [])
    executor = parallel.executor_for(steps)
    if executor is not None:
        meta = _delegate(executor, recover_on_rank, student, dict(
            student=student, teacher=teacher, x=x, y=y, steps=steps, config=config, seed=seed, lr=lr,
            schedule=schedule, desc=desc, device=device.type))
        if on_step is not None:
            for step in range(steps):
                on_step(step)
        return RecoveryStats(steps, float(meta["final_loss"]), json.loads(meta["taps"]))
    lr = config.lr if lr is None else lr
    torch.manual_seed(seed)  # adapter init
    use_teacher = teacher is not None and (config.lambda_feat > 0 or config.lambda_kd > 0)
    taps = select_taps(student, teacher) if use_teacher and config.lambda_feat > 0 else []
    batches = _Batches(x, y, config.batch_size, seed, device, config.augment)
    student.to(device).train()
    if use_teacher:
        teacher.to(device).eval()

    adapters = nn.ModuleDict()
    forward, finish = prepare(student, device)  # DDP under a process group, else the student itself
    s_taps, t_taps = FeatureTaps(student, taps), FeatureTaps(teacher, taps) if use_teacher else None
    with s_taps, (t_taps if t_taps is not None else nullcontext()):
        if taps:  # probe shapes once to build width adapters
            xb, _ = batches.next()
            with torch.no_grad():
                student.eval()
                student(xb[:2])
                teacher(xb[:2])
                student.train()
            for i, name in enumerate(taps):
                adapters[str(i)] = _adapter(s_taps.features[name], t_taps.features[name])
            adapters.to(device)
        params = list(student.parameters()) + list(adapters.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        loss_value = float("nan")
        bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        total, step = steps, 0
        while step < total:
            if schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = _cosine(step, total, lr)
            xb, yb = batches.next()
            logits = forward(xb)
            loss = token_loss(logits, yb)
            if use_teacher:
                with torch.no_grad():
                    t_logits = teacher(xb)
                for i, name in enumerate(taps):
                    fs, ft = s_taps.features[name], t_taps.features[name]
                    fs = adapters[str(i)](fs)
                    loss = loss + config.lambda_feat * F.l1_loss(fs, ft)
                if config.lambda_kd > 0:
                    tau = config.tau
                    s_kd, t_kd = (logits.flatten(0, 1), t_logits.flatten(0, 1)) if logits.dim() == 3 else (logits, t_logits)
                    kd = F.kl_div(F.log_softmax(s_kd / tau, dim=1), F.log_softmax(t_kd / tau, dim=1),
                                  reduction="batchmean", log_target=True)
                    loss = loss + config.lambda_kd * tau * tau * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_grads(list(adapters.parameters()))
            opt.step()
            loss_value = float(loss.detach())
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if on_step is not None:
                on_step(step)
            step += 1
            bar.update(1)
            if horizon is not None and step < total:
                total = max(step, min(total, int(horizon(step))))
                if total != bar.total:
                    bar.total = total
                    bar.refresh()
        bar.close()
    finish()
    student.zero_grad(set_to_none=True)
    student.eval()
    return RecoveryStats(step, mean_over_ranks(loss_value), taps)


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: float,
    batch_size: int = 128,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    device: torch.device,
    augment: bool = True,
    progress: bool = False,
    on_epoch: Callable[[int], None] | None = None,
) -> float:
    """Dense training: SGD with Nesterov momentum and a one-cycle schedule; returns the last loss."""
    steps_per_epoch = max(1, math.ceil(len(x) / min(batch_size, len(x)))) if len(x) else 1
    executor = parallel.executor_for(max(1, round(epochs * steps_per_epoch)))
    if executor is not None:
        meta = _delegate(executor, train_on_rank, model, dict(
            model=model, x=x, y=y, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            seed=seed, augment=augment, device=device.type))
        if on_epoch is not None:
            for epoch in range(1, int(epochs) + 1):
                on_epoch(epoch)
        return float(meta["final_loss"])
    torch.manual_seed(seed)
    batches = _Batches(x, y, batch_size, seed, device, augment)
    steps_per_epoch = max(1, math.ceil(len(x) / batches.batch_size))
    total = max(1, round(epochs * steps_per_epoch))
    model.to(device).train()
    forward, finish = prepare(model, device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    loss_value = float("nan")
    bar = tqdm(range(total), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        xb, yb = batches.next()
        loss = token_loss(forward(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress and step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}", epoch=f"{step / steps_per_epoch:.2f}")
        if on_epoch is not None and (step + 1) % steps_per_epoch == 0:
            on_epoch((step + 1) // steps_per_epoch)
    finish()
    model.eval()
    return mean_over_ranks(loss_value)


# --- one rank's part of a call handed to an executor (top-level functions: they travel to the workers) ----------


def _rank_device(kind: str) -> torch.device:
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def recover_on_rank(payload: dict) -> tuple[dict[str, Tensor], dict[str, str]]:
    p = dict(payload)
    student = p.pop("student")
    stats = recover(student, p.pop("teacher"), p.pop("x"), p.pop("y"), device=_rank_device(p.pop("device")), **p)
    return _cpu_state(student), {"final_loss": repr(stats.final_loss), "taps": json.dumps(stats.taps)}


def train_on_rank(payload: dict) -> tuple[dict[str, Tensor], dict[str, str]]:
    p = dict(payload)
    model = p.pop("model")
    loss = train(model, p.pop("x"), p.pop("y"), device=_rank_device(p.pop("device")), **p)
    return _cpu_state(model), {"final_loss": repr(loss)}


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _delegate(executor, fn, model: nn.Module, payload: dict) -> dict[str, str]:
    """Run ``fn`` on the executor's workers and load rank 0's trained weights into ``model``."""
    state, meta = executor.run(fn, payload)
    model.load_state_dict(state)
    model.eval()
    return meta

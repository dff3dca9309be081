"""GPU training with the whole step captured once as a CUDA graph (opt-in).

On a GPU the FM2S network is so small that a training step costs what launching its
~40 kernels costs: about 1.9 ms on an H200, whatever the crop size (benchmarks/RESULTS.md).
Captured as a CUDA graph, forward, backward, Adam and the weight average replay as one
launch. For that the step holds no host-side value that changes from step to step: the
learning rate, Adam's bias corrections and the average's weight come from a table on the
device, read at a step counter that the graph itself advances.

On a CPU :class:`CapturedStep` runs the same step without capture (what the CPU tests
check); its weights differ from :class:`fm2s.training.Adam`'s only by rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def step_table(lr: Callable[[int], float], total: int, betas: tuple[float, float],
               decay: Callable[[int], float] | None = None) -> np.ndarray:
    """Per-step scalars of Adam and the weight average, one row per step.

    Parameters
    ----------
    lr
        Learning rate of step ``k`` (0-based: the steps taken before it).
    total
        Number of steps.
    betas
        Adam's betas.
    decay
        The weight average's decay after ``t`` steps (t = 1, 2, ...); None: no average.

    Returns
    -------
    np.ndarray
        (total, 3) float32: the negated step size -lr / (1 - beta1^t),
        sqrt(1 - beta2^t), and the average's weight 1 - decay (t = 1, 2, ...).
    """
    beta1, beta2 = betas
    t = np.arange(1, total + 1, dtype=np.float64)
    rates = np.array([lr(k) for k in range(total)], dtype=np.float64)
    decays = np.array([decay(k) for k in range(1, total + 1)] if decay else np.zeros(total),
                      dtype=np.float64)
    return np.stack([-rates / (1 - beta1 ** t), np.sqrt(1 - beta2 ** t), 1 - decays],
                    axis=1).astype(np.float32)


def adam_update(params: list[torch.Tensor], grads: list[torch.Tensor],
                exp_avg: list[torch.Tensor], exp_avg_sq: list[torch.Tensor],
                row: torch.Tensor, betas: tuple[float, float], eps: float,
                ema: list[torch.Tensor] | None = None) -> None:
    """One Adam update (and weight-average update) with its per-step scalars in ``row``.

    ``row`` is one row of :func:`step_table` as a device tensor: nothing here reads a
    value back to the host, so the update can be captured in a CUDA graph.
    """
    beta1, beta2 = betas
    n = len(params)
    step_size, bias2_sqrt, weight = row[0], row[1], row[2]
    # the operations of torch.optim.Adam(capturable=True), whose 0-d device tensors are
    # known to replay in CUDA graphs
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sq)
    torch._foreach_div_(denom, [bias2_sqrt] * n)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(denom, [step_size] * n)  # step_size < 0: a step down the gradient
    torch._foreach_addcdiv_(params, exp_avg, denom)
    if ema is not None:
        torch._foreach_lerp_(ema, params, [weight] * n)


class CapturedStep:
    """The training step, captured as a CUDA graph after a few eager steps.

    Parameters
    ----------
    loss
        ``loss(inp, tgt)``: the network's loss on one batch (a 0-d tensor).
    params
        The network's parameters (their ``.grad`` must be None).
    table
        :func:`step_table`'s rows, one per step to be taken.
    betas, eps
        Adam's.
    ema
        The weight average's tensors, updated in place (None: no average).
    eager_steps
        Steps run without capture first (CUDA: on a side stream, as capture requires).
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 params: list[torch.Tensor], table: np.ndarray,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 ema: list[torch.Tensor] | None = None, eager_steps: int = 3) -> None:
        self.loss = loss
        self.params = params
        self.device = params[0].device
        self.table = torch.from_numpy(table).to(self.device)
        self.index = torch.zeros(1, dtype=torch.long, device=self.device)
        self.betas, self.eps, self.ema = betas, eps, ema
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.eager_steps = eager_steps
        self.steps = 0
        self.inp: torch.Tensor | None = None
        self.tgt: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture = self.device.type == "cuda"

    def _step(self) -> None:
        self.loss(self.inp, self.tgt).backward()
        with torch.no_grad():
            row = self.table.index_select(0, self.index)[0]
            self.index.add_(1)
            adam_update(self.params, [p.grad for p in self.params], self.exp_avg,
                        self.exp_avg_sq, row, self.betas, self.eps, self.ema)

    def __call__(self, inp: torch.Tensor, tgt: torch.Tensor) -> None:
        """One training step on ``inp`` (noisy) and ``tgt`` (target)."""
        if self.steps >= len(self.table):
            raise RuntimeError(f"the step table holds {len(self.table)} steps, all taken")
        if self.inp is None or self.inp.shape != inp.shape or self.tgt.shape != tgt.shape:
            if self.graph is not None:
                raise ValueError("a captured step takes batches of one shape")
            self.inp, self.tgt = inp.clone(), tgt.clone()
        else:
            self.inp.copy_(inp)
            self.tgt.copy_(tgt)
        self.steps += 1
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.capture:
            self._step()
            self._clear_grads()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._step()
            self._clear_grads()
        torch.cuda.current_stream().wait_stream(side)
        if self.steps == self.eager_steps:  # the next step replays this capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records, runs nothing: grads None, so
                self._step()               # backward allocates them in the graph's pool
            self.graph = graph

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

"""Batch normalization with statistics kept per timestep (Cooijmans et al. 2016, §3-4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class SequenceBatchNorm(_BatchNorm):
    """BN(x; gamma, beta) = beta + gamma * (x - E[x]) / sqrt(Var[x] + eps), statistics per timestep.

    The paper's §3 definition, applied at every timestep t of a sequence with statistics of that
    timestep (averaging them over time "severely degrades performance"), while gamma and beta
    are shared over time. Timesteps t >= max_length use the statistics of max_length - 1, and,
    as the paper asks for t > T_max, where population statistics are read (eval, and a
    training step with fewer than two sequences) timesteps that training never reached (beyond
    the longest sequence with two valid rows it saw) read those of the last one it reached.

    Population statistics follow ``_BatchNorm``: ``running_mean`` and ``running_var`` (one row
    per timestep, shape ``(max_length, C)``) are updated in training mode with ``momentum``,
    or as a cumulative average when ``momentum is None``; ``num_batches_tracked`` counts the
    batches seen by each row. So ``torch.optim.swa_utils.update_bn`` re-estimates them the
    paper's way: one pass over the training set with frozen weights, per timestep.

    ``shared=True`` keeps one set of statistics for all timesteps (the paper's BN-e* for the
    input term of padded data); ``max_length`` is then 1.

    Two entry points: ``forward`` normalizes a whole (T, B, C) sequence at once (one kernel
    when nothing is padded) and updates the running statistics; ``step`` normalizes one
    (B, C) timestep inside a recurrence, after ``start_sequence``, and ``update_running_stats``
    folds that sequence's statistics in after the loop. ``first_step`` is the timestep of a
    sequence's first step, for a long sequence read in chunks: chunk k of length L starts
    at k * L.
    """

    def __init__(
        self,
        num_features: int,
        max_length: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        gamma_init: float = 0.1,
        center: bool = True,
        shared: bool = False,
    ) -> None:
        if shared:
            max_length = 1
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        super().__init__(num_features, eps, momentum, affine=False, track_running_stats=True)
        self.max_length = max_length
        self.shared = shared
        self.gamma_init = gamma_init
        self.gamma = nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.beta = nn.Parameter(torch.zeros(num_features)) if center else None
        self.running_mean = torch.zeros(max_length, num_features)
        self.running_var = torch.ones(max_length, num_features)
        self.num_batches_tracked = torch.zeros(max_length, dtype=torch.long)
        # Scratch rows that F.batch_norm (momentum=1.0) fills with each step's batch statistics
        # inside its own kernel; update_running_stats folds them in after the recurrence.
        self.register_buffer("batch_mean", torch.zeros(max_length, num_features), persistent=False)
        self.register_buffer("batch_var", torch.zeros(max_length, num_features), persistent=False)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        # Rows 0 .. rows_reached - 1 hold every row that training estimated: a host-side count,
        # so that eval finds the last one without reading num_batches_tracked off the device.
        self.rows_reached = 0
        if hasattr(self, "batch_mean"):  # _NormBase.__init__ calls this before the scratch rows exist
            self.start_sequence()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        tracked = self.num_batches_tracked.nonzero()
        self.rows_reached = int(tracked.max()) + 1 if len(tracked) else 0

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "gamma"):  # _NormBase.__init__ calls this before gamma exists
            nn.init.constant_(self.gamma, self.gamma_init)
            if self.beta is not None:
                nn.init.zeros_(self.beta)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, max_length={self.max_length}, eps={self.eps}, momentum={self.momentum}, "
            f"center={self.beta is not None}, shared={self.shared}"
        )

    def check_batch(self, batch: int) -> None:
        """Refuses training on a batch of one sequence, which has no batch variance."""
        if self.training and batch < 2:
            raise ValueError(
                "batch normalization in training mode needs at least 2 sequences per batch, "
                f"got {batch}; use model.eval() for single sequences"
            )

    def forward(
        self, x: Tensor, batch_sizes: list[int] | None = None, shift: Tensor | None = None, first_step: int = 0
    ) -> Tensor:
        """Normalizes a sequence x (T, B, C) of timesteps first_step, first_step + 1, ...;
        ``batch_sizes[t]`` rows are valid at its step t.

        Rows beyond ``batch_sizes[t]`` (padding, the batch sorted by length) enter no
        statistic; their output is unspecified. ``shift`` (C,) is added to the output inside
        the normalization's own kernel (for BN(W_x x; gamma, 0) + b, one pass instead of two).
        """
        if x.dim() != 3 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"SequenceBatchNorm expects a sequence (T, B, C) with C = num_features = {self.num_features}, "
                f"got shape {tuple(x.shape)}; .step(x, t) normalizes a single timestep (B, C)"
            )
        steps, batch, channels = x.shape
        self.check_batch(batch)
        beta = self._shifted_beta(shift)
        timesteps = range(1) if self.shared else range(first_step, first_step + steps)
        if batch_sizes is not None and min(batch_sizes) < batch:
            return self._forward_padded(x, batch_sizes, beta, timesteps)
        if self.shared:
            flat = x.reshape(steps * batch, channels)
            out = self._normalize(flat, timesteps, self.gamma, beta)
            return out.view(steps, batch, channels)
        # Per-timestep statistics over the batch for all T at once: (B, T*C) channels.
        flat = x.transpose(0, 1).reshape(batch, steps * channels)
        out = self._normalize(flat, timesteps, self.gamma.repeat(steps), None if beta is None else beta.repeat(steps))
        return out.view(batch, steps, channels).transpose(0, 1)

    def _shifted_beta(self, shift: Tensor | None) -> Tensor | None:
        if shift is None:
            return self.beta
        return shift if self.beta is None else self.beta + shift

    def _normalize(self, flat: Tensor, timesteps: range, gamma: Tensor, beta: Tensor | None) -> Tensor:
        """F.batch_norm over the rows of ``flat``, whose columns are ``timesteps`` x C channels."""
        if not self.training:
            rows = self._rows(timesteps, flat.device)
            return F.batch_norm(
                flat, self.running_mean[rows].flatten(), self.running_var[rows].flatten(),
                gamma, beta, False, 0.0, self.eps,
            )
        # Statistics in the parameters' dtype: under bf16 autocast the input is bf16, and
        # batch_norm's mixed-precision kernels keep statistics in float32.
        mean, var = self.gamma.new_zeros(2, len(timesteps) * self.num_features)
        out = F.batch_norm(flat, mean, var, gamma, beta, True, 1.0, self.eps)
        self._accumulate(mean.view(len(timesteps), -1), var.view(len(timesteps), -1), timesteps.start)
        return out

    def _forward_padded(self, x: Tensor, batch_sizes: list[int], beta: Tensor | None, timesteps: range) -> Tensor:
        steps, batch, _ = x.shape
        population = self._rows(timesteps, x.device)
        mean = self.running_mean[population].unsqueeze(1)
        var = self.running_var[population].unsqueeze(1)
        counts = torch.tensor(batch_sizes, device=x.device)
        mask = (torch.arange(batch, device=x.device) < counts[:, None]).unsqueeze(-1)
        # Zeros for the padding, selected rather than multiplied in: a non-finite pad times 0
        # is NaN, which the statistics and every gradient would sum.
        x = torch.where(mask, x, 0)
        if self.training:
            reduce = (0, 1) if self.shared else (1,)
            # Statistics in the running statistics' dtype, as in ``_normalize``: under bf16
            # autocast x is bf16, and they are folded into float32 running statistics.
            n = mask.sum(reduce, keepdim=True, dtype=mean.dtype)
            # A step beyond every sequence's end has n = 0: its statistics are discarded below,
            # but the backward of a division by 0 would still be 0/0, NaN, in W_x's gradient.
            valid = n.clamp(min=1)
            batch_mean = x.sum(reduce, keepdim=True, dtype=mean.dtype) / valid
            batch_var = torch.where(mask, x - batch_mean, 0).square().sum(reduce, keepdim=True) / valid
            # A step with a single valid sequence has no batch variance: population statistics.
            enough = n > 1
            mean = torch.where(enough, batch_mean, mean)
            var = torch.where(enough, batch_var, var)
            tracked = int(enough.sum())  # a prefix: batch sizes never grow
            unbiased = batch_var * n / (n - 1).clamp(min=1)
            self._accumulate(batch_mean[:tracked, 0].detach(), unbiased[:tracked, 0].detach(), timesteps.start)
        out = (x - mean) * torch.rsqrt(var + self.eps) * self.gamma
        return out if beta is None else out + beta

    def start_sequence(self) -> None:
        """Clears the rows that ``step`` fills, before a sequence. It fills them as F.batch_norm
        with momentum 1.0 does, 0 * old + new: a NaN that one non-finite batch left there would
        otherwise stay, and reach the running statistics of every later batch."""
        # Unseen by autograd, as F.batch_norm's own writes are: an earlier forward's graph,
        # not yet backpropagated, holds these rows (which training's backward never reads),
        # and would refuse a version bump.
        self.batch_mean.data.zero_()
        self.batch_var.data.zero_()

    def step(self, x: Tensor, t: int, shift: Tensor | None = None) -> Tensor:
        """Normalizes timestep t, x (B, C), inside a recurrence; ``shift`` as in ``forward``."""
        beta = self._shifted_beta(shift)
        if self.training and len(x) > 1:
            if t < self.max_length:
                return F.batch_norm(x, self.batch_mean[t], self.batch_var[t], self.gamma, beta, True, 1.0, self.eps)
            return F.batch_norm(x, None, None, self.gamma, beta, True, 0.0, self.eps)
        t = min(t, self._last_population_row())
        mean, var = self.running_mean[t], self.running_var[t]
        if self.training:
            # A single sequence, beyond max_length: its row may be one that this training
            # step's update_running_stats then changes in place, which backward would refuse.
            mean, var = mean.clone(), var.clone()
        return F.batch_norm(x, mean, var, self.gamma, beta, False, 0.0, self.eps)

    def keep_batch_statistics(self, mean: Tensor, var: Tensor, first_step: int = 0) -> None:
        """Keeps the batch statistics of a whole sequence, (T, C), the variance unbiased: what
        ``step`` keeps one step at a time, for ``update_running_stats`` to fold in."""
        rows = self._own_rows(first_step, len(mean))
        self.batch_mean[rows] = mean[: rows.stop - rows.start]
        self.batch_var[rows] = var[: rows.stop - rows.start]

    def population_statistics(self, steps: int, device: torch.device, first_step: int = 0) -> tuple[Tensor, Tensor]:
        """The running mean and variance that ``step`` normalizes a sequence's ``steps``
        timesteps from ``first_step`` with in eval mode, (steps, C)."""
        rows = self._rows(range(first_step, first_step + steps), device)
        return self.running_mean[rows], self.running_var[rows]

    def update_running_stats(self, batch_sizes: list[int], first_step: int = 0) -> None:
        """Folds in the statistics that ``step`` gathered over a sequence; in eval mode,
        whatever the layer's, nothing (``step`` gathered none), as ``_BatchNorm`` decides."""
        if not self.training:
            return
        own = self._own_rows(first_step, len(batch_sizes))
        tracked = sum(1 for n in batch_sizes[: own.stop - own.start] if n > 1)
        rows = slice(first_step, first_step + tracked)
        self._accumulate(self.batch_mean[rows], self.batch_var[rows], first_step)

    def _own_rows(self, first_step: int, steps: int) -> slice:
        """The rows of ``steps`` timesteps from ``first_step`` that have statistics of their
        own: those below max_length (later timesteps keep none)."""
        return slice(first_step, max(first_step, min(first_step + steps, self.max_length)))

    def _rows(self, timesteps: range, device: torch.device) -> Tensor:
        """The rows of population statistics that ``timesteps`` read."""
        return torch.arange(timesteps.start, timesteps.stop, device=device).clamp(max=self._last_population_row())

    def _last_population_row(self) -> int:
        """The row that later timesteps read: the last one training reached, or, before any
        training, max_length - 1."""
        return self.rows_reached - 1 if self.rows_reached else self.max_length - 1

    @torch.no_grad()
    def _accumulate(self, mean: Tensor, var: Tensor, first_step: int) -> None:
        """running <- running + weight * (batch - running) for len(mean) timesteps from
        ``first_step``, those below max_length."""
        rows = self._own_rows(first_step, len(mean))
        tracked = rows.stop - rows.start
        if tracked == 0:
            return
        mean, var = mean[:tracked], var[:tracked]
        # Set, not read, where a sequence reaches every row (as in training on whole sequences of
        # max_length): torch.compile would otherwise guard on the count and recompile as it grew.
        self.rows_reached = self.max_length if rows.stop == self.max_length else max(self.rows_reached, rows.stop)
        count = self.num_batches_tracked[rows]
        count += 1
        if self.momentum is None:  # cumulative average, as update_bn asks for
            # 1 / count in the statistics' own dtype: a float32 weight would round float64
            # statistics to ~1e-8.
            weight = count.to(self.running_mean.dtype).reciprocal().unsqueeze(1)
        else:
            weight = self.momentum
        self.running_mean[rows].lerp_(mean, weight)
        self.running_var[rows].lerp_(var, weight)

"""`DPTrainer`: DP-SGD on numpy (or memory-mapped) arrays, for the node and for local use."""

from __future__ import annotations

import copy
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from veil._exceptions import ValidationError
from veil.engine._build import build_module
from veil.engine._checkpoint import CHECKPOINT_FORMAT, optimizer_state, restore_optimizer_state
from veil.engine._data import (
    check_rows,
    check_shapes,
    input_tensor,
    row_indices,
    target_tensor,
)
from veil.engine._dpsgd import (
    clip_and_sum,
    clip_by_subject,
    per_example_grads,
)
from veil.engine._layerwise import backprops, clip_layerwise, supports
from veil.engine._objective import Objective
from veil.engine._randomness import Randomness, SecureRandomness, SeededRandomness
from veil.engine._results import EpochInfo, FitResult, RowMetrics, StepInfo, StepResult
from veil.engine._sampling import sampling_rate, steps_per_epoch
from veil.engine._subjects import (
    SubjectBatch,
    SubjectIndex,
    check_rows_per_subject,
    check_subjects,
)
from veil.nn import SGD, Adam, Adamax, Dropout, ModelSpec, Optimizer, RMSprop
from veil.privacy.grouping import SubjectOrder

__all__ = ["DPTrainer"]

# Per-example gradients of one chunk hold chunk * params floats: cap that, so a large
# Poisson batch of a large model is processed in pieces instead of exhausting memory.
_GRAD_ELEMENTS = 1 << 26
# And its layers' outputs at most this many bytes. Measured on the IDC CNN (3x50x50,
# batch 256, `benchmarks/epoch_memory.py`): whole-batch tensors of 10 to 40 MB, of a new
# size at every Poisson step, left glibc's arenas holding 2 GB of the node's heap by the
# end of an epoch; chunks of 49 rows keep every tensor small and of one size from chunk
# to chunk (the heap stayed near 500 MB), and stepped faster (cache-sized tensors).
_ACTIVATION_BYTES = 1 << 24
_EVAL_BATCH = 1024
# The least DP-SGD noise std: far over float32's normal range (1.2e-38, under which the
# node's threads flush numbers to zero), far under what a spec allows (0.3 x 1e-6).
_MIN_NOISE_STD = 1e-20


def _torch_optimizer(
    spec: Optimizer, params: Sequence[torch.nn.Parameter]
) -> torch.optim.Optimizer:
    if isinstance(spec, SGD):
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum)
    by_type: dict[type[Optimizer], type[torch.optim.Optimizer]] = {
        Adamax: torch.optim.Adamax,
        Adam: torch.optim.Adam,
        RMSprop: torch.optim.RMSprop,
    }
    return by_type[type(spec)](params, lr=spec.lr)


def _device(device: str | torch.device) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValidationError(
            f"Expected a torch device such as 'cpu' or 'cuda'. Received: device={device!r}"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValidationError(
            f"Expected device='cpu': CUDA is not available here. Received: device={device!r}"
        )
    if resolved.type == "cuda":
        # cuDNN would run convolutions in TF32 (10-bit mantissas): a per-example norm,
        # and so the clip that bounds each example's sensitivity, would be off by about
        # 1e-3. DP-SGD on this process's GPU keeps full float32.
        torch.backends.cudnn.allow_tf32 = False
    return resolved


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValidationError(f"Expected {name} of a positive int. Received: {name}={value!r}")
    return int(value)


def _seeds(seed: int | None) -> list[int]:
    """Four independent 64-bit seeds (weights, noise, dropout, sampling); None draws
    them from `secrets`."""
    if seed is None:
        seed = secrets.randbits(128)
    elif isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValidationError(f"Expected seed of a non-negative int or None. Received: {seed!r}")
    children = np.random.SeedSequence(int(seed)).spawn(4)
    return [int(c.generate_state(1, np.uint64)[0]) for c in children]


def _by_subject(
    subjects: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray | None,
    train_subjects: np.ndarray | None,
    val_subjects: np.ndarray | None,
    k: int | None,
    uniform: Callable[[int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, SubjectIndex, SubjectIndex | None]:
    """(train rows, validation rows, the training index, the held-out index with k).

    Where the unit is the subject, how many rows the training and the held-out subjects
    own is private; together they are the rows the fit was given, a public count. So
    the rows are checked and sorted together, once: the work follows their total, never
    either part's size. Each index holds every row and samples over its own pool (by
    default, the subjects owning its rows); the pools may share no subject.
    """
    n = subjects.shape[0]
    train = row_indices("train_rows", train_rows)
    val = row_indices("val_rows", [] if val_rows is None else val_rows)
    both = check_rows("train_rows and val_rows", np.concatenate([train, val]), n)
    pool = np.unique(subjects[train]) if train_subjects is None else train_subjects
    val_pool = np.unique(subjects[val]) if val_subjects is None else val_subjects
    if np.intersect1d(pool, val_pool).size:
        raise ValidationError(
            "Expected training and validation subjects apart (a subject's rows all train "
            "or all validate). Received: subjects in both"
        )
    ranks = np.asarray(subjects[both])
    # By a table over the pool's span, not by sorting the ranks with the pool (a sort's
    # work follows how many of the rows share a subject): the node's pools are ranks,
    # within the dataset's size; other ids may leave it to numpy.
    integral = np.asarray(pool).dtype.kind in "iu" and ranks.dtype.kind in "iu"
    span = int(np.max(pool)) - int(np.min(pool)) + 1 if integral and np.size(pool) else 0
    member = np.isin(ranks, pool, kind="table" if integral and span <= max(n, 1) else None)
    if np.count_nonzero(member) != train.size:
        raise ValidationError(
            "Expected train_rows to be exactly the given rows whose subjects are in "
            "train_subjects. Received: rows of training subjects among val_rows, or "
            "training rows of other subjects"
        )
    # Which rows share a subject is private, and a sort's work follows what it is given
    # (rows already in subject order sorted 150x faster on a million rows, one person's
    # rows moved elsewhere took 3x longer): `SubjectIndex` sorts through `shuffled`.
    index = SubjectIndex(both, ranks, pool, shuffled=_shuffle(both.size, uniform))
    if len(index) == 0:
        raise ValidationError("Expected at least one training subject. Received: none")
    # With k the held-out subjects' rows are drawn from the index; without, all of them
    # are evaluated (work that follows their count: the node always gives k).
    held_out = None if k is None else index.over(val_pool)
    return train, (np.sort(val) if k is None else val), index, held_out


class DPTrainer:
    """DP-SGD for one `ModelSpec`.

    Without `seed` (always, on the node) the gradient noise and Poisson sampling come
    from a cryptographically secure stream that is never saved (`SecureRandomness`),
    and weights and dropout masks from a seed drawn with `secrets`. With a `seed`, every
    draw comes from ordinary generators seeded from it so that a local experiment
    repeats exactly; that mode is not secure and the node never uses it.

    Rows that do not fit (non-finite inputs, labels outside the loss's range) are never
    an error: they contribute a zero gradient and a non-finite loss, with the same work
    as any other row (see `veil.engine._data`).
    """

    def __init__(
        self, spec: ModelSpec, *, seed: int | None = None, device: str | torch.device = "cpu"
    ) -> None:
        if not isinstance(spec, ModelSpec):
            raise ValidationError(f"DPTrainer expects a ModelSpec. Received: {type(spec).__name__}")
        self.spec = spec
        self.device = _device(device)
        self.objective = Objective.from_spec(spec)
        init_seed = _seeds(seed)[0]
        module = build_module(spec, generator=torch.Generator().manual_seed(init_seed))
        self.module = module.to(self.device)
        self._params = list(self.module.named_parameters())  # updated in place, never replaced
        self._names = [name for name, _ in self._params]
        self.optimizer = _torch_optimizer(spec.optimizer, list(self.module.parameters()))
        self._per_example = per_example_grads(self.module, self.objective)
        # Row-level steps clip layer by layer where every parameter allows it. Measured
        # in `benchmarks/training.py` against vmap: 6x faster on the MLP, 2x on the
        # CNN32, level on the IDC CNN (both spend it in the same per-example convolution
        # gradients). GroupNorm models keep vmap, and so do subject-level steps: they
        # need each example's gradient to sum by subject.
        self._layerwise = supports(self.module)
        self._chunk, self._eval_rows = _chunk_rows(spec, self.device)
        inputs = (spec.input_shape, *spec.shapes[:-1])
        self._dropouts = [
            (layer.rate, tuple(int(d) for d in shape[1:]))  # type: ignore[arg-type]
            for layer, shape in zip(spec.layers, inputs, strict=True)
            if isinstance(layer, Dropout)
        ]
        self.steps_done = 0
        self.reseed(seed)

    @property
    def secure(self) -> bool:
        """Whether noise and sampling come from the secure stream (no seed was given)."""
        return self._random.secure

    def reseed(self, seed: int | None) -> None:
        """New noise, dropout and sampling streams (weights stay as they are); None
        makes them secure again."""
        _, noise, dropout, sampling = _seeds(seed)
        self._dropout = torch.Generator(device=self.device).manual_seed(dropout)
        self._random: Randomness = (
            SecureRandomness()
            if seed is None
            else SeededRandomness(noise_seed=noise, sampling_seed=sampling, device=self.device)
        )

    # DP parameters -------------------------------------------------------------------

    def _dp(
        self, noise_multiplier: float | None, max_grad_norm: float | None
    ) -> tuple[float, float]:
        values = []
        for name, given, default in (
            ("noise_multiplier", noise_multiplier, self.spec.noise_multiplier),
            ("max_grad_norm", max_grad_norm, self.spec.max_grad_norm),
        ):
            value = default if given is None else given
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValidationError(
                    f"Expected {name} of a finite number > 0 (DP-SGD cannot be switched off). "
                    f"Received: {name}={value!r}"
                )
            values.append(float(value))
        sigma, clip = values
        if sigma * clip < _MIN_NOISE_STD:
            raise ValidationError(
                f"Expected a noise std noise_multiplier x max_grad_norm >= {_MIN_NOISE_STD:g}: "
                "float32 flushes a smaller one to zero, which is no noise at all. Received: "
                f"{sigma:g} x {clip:g}"
            )
        return sigma, clip

    # One DP-SGD update ----------------------------------------------------------------

    def _masks(self, rows: int) -> list[torch.Tensor]:
        masks = []
        for rate, shape in self._dropouts:
            keep = torch.full((rows, *shape), 1.0 - rate, device=self.device)
            masks.append(torch.bernoulli(keep, generator=self._dropout) / (1.0 - rate))
        return masks

    def _update(
        self,
        xb: np.ndarray,
        yb: np.ndarray,
        sigma: float,
        clip: float,
        denominator: float,
        subjects: SubjectBatch | None = None,
        *,
        keep_outputs: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, sum, noise, divide by `denominator`, optimizer step.

        Each row is clipped on its own; with `subjects`, each subject's rows' summed
        gradient is clipped instead (one subject, one clipped term), and padding slots
        contribute nothing. Returns the batch's per-example losses and outputs before
        the update (non-finite for rows that did not fit; no outputs without
        `keep_outputs`: a fit has no use for them). Every row, valid or not, takes the
        same operations.
        """
        if not self.module.training:
            self.module.train()
        real = None if subjects is None else torch.as_tensor(subjects.real, device=self.device)
        sums: dict[str, torch.Tensor] = {}
        losses, outputs, x_oks, valids = [], [], [], []

        def batch(part: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
            """One chunk's tensors, made from its rows only: a batch is never converted
            whole (its float copy would take several times the rows' bytes)."""
            x, x_ok = input_tensor(xb[part], self.device)
            y, y_ok = target_tensor(self.objective, self.spec, yb[part], self.device)
            valid = x_ok & y_ok if real is None else x_ok & y_ok & real[part]
            x_oks.append(x_ok)
            valids.append(valid)
            return x, y, valid, self._masks(x.shape[0])

        def keep(loss: torch.Tensor, out: torch.Tensor) -> None:
            losses.append(loss)
            if keep_outputs:
                outputs.append(out)

        def add(clipped: dict[str, torch.Tensor]) -> None:
            if not sums:  # the first chunk's sums are ours to add to
                sums.update(clipped)
                return
            for name in sums:
                sums[name] += clipped[name]

        rows = int(xb.shape[0])
        if subjects is None and self._layerwise:
            for start in range(0, rows, self._chunk):
                x, y, valid, masks = batch(slice(start, start + self._chunk))
                terms = backprops(self.module, self.objective, x, y, masks)
                keep(terms.losses, terms.outputs)
                add(clip_layerwise(terms, clip, valid)[0])
        else:
            params = {name: p.detach() for name, p in self._params}
            buffers = dict(self.module.named_buffers())

            def per_example(part: slice) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
                x, y, valid, masks = batch(part)
                grads, loss, out = self._per_example(params, buffers, x, y, masks)
                keep(loss, out)
                return grads, valid

            if subjects is None:
                for start in range(0, rows, self._chunk):
                    grads, valid = per_example(slice(start, start + self._chunk))
                    add(clip_and_sum(grads, clip, valid)[0])
            else:
                add(
                    clip_by_subject(
                        per_example, subjects.groups, clip, chunk=self._chunk, like=params
                    )
                )
        noise = self._random.normal(self.spec.param_count, self.device) * (sigma * clip)
        offset = 0
        for name, p in self._params:
            size = p.numel()
            noised = noise[offset : offset + size].view_as(p)
            if name in sums:  # the sums are this step's own: noised and divided in place
                p.grad = sums[name].add_(noised).div_(denominator)
            else:  # a batch with no rows: the noise alone
                p.grad = noised / denominator
            offset += size
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        out_shape = tuple(int(d) for d in self.spec.output_shape[1:])  # type: ignore[arg-type]
        if not losses:
            return torch.zeros(0, device=self.device), torch.zeros((0, *out_shape))
        loss = _unfit(torch.cat(losses), torch.cat(valids))
        if not keep_outputs:
            return loss, torch.zeros((0, *out_shape))
        return loss, _unfit(torch.cat(outputs), torch.cat(x_oks))

    # Public training API -------------------------------------------------------------

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        train_rows: np.ndarray,
        epochs: int,
        batch_size: int,
        noise_multiplier: float | None = None,
        max_grad_norm: float | None = None,
        val_rows: np.ndarray | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        on_epoch: Callable[[EpochInfo], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        start_step: int = 0,
        subjects: np.ndarray | None = None,
        train_subjects: np.ndarray | None = None,
        rows_per_subject: int | None = None,
        val_subjects: np.ndarray | None = None,
    ) -> FitResult:
        """DP-SGD with Poisson sampling over `train_rows` of x, y (memmaps welcome).

        Each epoch runs `steps_per_epoch(len(train_rows), batch_size)` steps, each on a
        Poisson sample at rate q = batch_size / len(train_rows) (empty batches included:
        a noise-only step). The clipped gradient sum plus N(0, (sigma C)^2) noise is
        divided by the expected batch size q * len(train_rows). Validation metrics are
        raw per-row values on `val_rows` (disjoint from `train_rows`), after each full
        epoch (by subject, whenever `val_rows` is given, even empty: which rows the
        held-out subjects own is private). `should_stop()` is asked after every step;
        True ends the run there, except after an epoch's last step, where it is asked
        once the epoch's validation and `on_epoch` are done: a run never stops between an
        epoch and its validation.

        `start_step` resumes a run whose first `start_step` steps are already in the
        model (restored from a checkpoint): it runs the remaining steps only, from the
        same place in the same epoch. Poisson steps are independent of each other, so
        the resumed run is the uninterrupted one with fresh noise; `epochs_done` counts
        the epochs this call finished.

        With `subjects` (each row's data subject, an int per row of x), the unit is the
        subject: every step samples the subjects of `train_subjects` (by default those
        owning a training row) at q = batch_size / len(train_subjects), takes each
        sampled subject's training rows (at most `rows_per_subject` of them, at random),
        clips the subject's summed gradient to max_grad_norm and divides by the expected
        number of subjects; an epoch is ceil(len(train_subjects) / batch_size) steps.
        With `rows_per_subject` k, validation takes k random rows of each subject of
        `val_subjects` (by default those owning a validation row), padded to exactly k,
        so that its work is public too: len(val_subjects) x k rows evaluated.
        """
        sigma, clip = self._dp(noise_multiplier, max_grad_norm)
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size)
        check_shapes(self.spec, x, y)
        n = int(x.shape[0])
        k = check_rows_per_subject(rows_per_subject)
        by_subject = held_out = None
        if subjects is None:
            train = check_rows("train_rows", train_rows, n)
            if train.size == 0:
                raise ValidationError("Expected at least one training row. Received: none")
            val = check_rows("val_rows", [] if val_rows is None else val_rows, n)
            if np.intersect1d(train, val, assume_unique=True).size:  # both checked unique
                raise ValidationError(
                    "Expected val_rows disjoint from train_rows. Received: rows in both"
                )
        else:
            train, val, by_subject, held_out = _by_subject(
                check_subjects(subjects, n),
                train_rows,
                val_rows,
                train_subjects,
                val_subjects,
                k,
                self._random.uniform,
            )
        units = len(train) if by_subject is None else len(by_subject)
        q = sampling_rate(units, batch_size)
        per_epoch = steps_per_epoch(units, batch_size)
        total = epochs * per_epoch
        expected = q * units
        positions = np.arange(units)
        done, seen, stopped, history = _start_step(start_step, total), 0, False, []
        stop = should_stop or (lambda: False)
        first_epoch, skip = divmod(done, per_epoch)
        for epoch in range(first_epoch + 1, epochs + 1):
            for index in range(skip if epoch == first_epoch + 1 else 0, per_epoch):
                drawn = self._random.poisson(positions, q)
                if by_subject is None:
                    rows, batch = train[drawn], None
                else:
                    batch = by_subject.gather(
                        drawn, rows_per_subject=k, uniform=self._random.uniform
                    )
                    rows = batch.rows
                self._update(x[rows], y[rows], sigma, clip, expected, batch, keep_outputs=False)
                done += 1
                seen += len(drawn)
                if on_step is not None:
                    on_step(StepInfo(epoch, done, total, seen, len(drawn)))
                if index < per_epoch - 1 and stop():
                    stopped = True
                    break
            if stopped:
                break
            validate = val.size > 0 or (subjects is not None and val_rows is not None)
            info = (
                self._validation(epoch, x, y, val, held_out, k)
                if validate
                else EpochInfo(epoch, None)
            )
            history.append(info)
            if on_epoch is not None:
                on_epoch(info)
            if epoch < epochs and stop():
                stopped = True
                break
        return FitResult(done, total, len(history), stopped, q, per_epoch, tuple(history))

    def _validation(
        self,
        epoch: int,
        x: np.ndarray,
        y: np.ndarray,
        val: np.ndarray,
        held_out: SubjectIndex | None,
        k: int | None,
    ) -> EpochInfo:
        """An epoch's validation metrics: of the `val` rows, or with `held_out` (by
        subject, `rows_per_subject` k), of k padded slots per held-out subject, all of
        them, the real ones marked: the rows evaluated, and what the release reads, are
        a public count (how many slots are real is private)."""
        if held_out is None or k is None:
            return EpochInfo(epoch, self._evaluate(x, y, val), val)
        slots = held_out.gather(
            np.arange(len(held_out)), rows_per_subject=k, uniform=self._random.uniform
        )
        return EpochInfo(epoch, self._evaluate(x, y, slots.rows), slots.rows, slots.real)

    def step(
        self,
        x_batch: np.ndarray,
        y_batch: np.ndarray,
        *,
        noise_multiplier: float | None = None,
        max_grad_norm: float | None = None,
        subjects: np.ndarray | None = None,
    ) -> StepResult:
        """One DP-SGD step on exactly these rows (no sampling), normalised by the public
        batch size len(x_batch). Per-row losses and predictions are from before the update.
        With `subjects` (each row's data subject), each subject's rows are clipped together:
        one subject moves the step by at most one clipped gradient."""
        sigma, clip = self._dp(noise_multiplier, max_grad_norm)
        check_shapes(self.spec, x_batch, y_batch)
        n = int(x_batch.shape[0])
        if n == 0:
            raise ValidationError("Expected a batch of at least one row. Received: 0 rows")
        batch, order = None, None
        if subjects is not None:
            ranks = np.asarray(check_subjects(subjects, n))
            # In subject order, read and written back through random permutations only
            # (`SubjectOrder`): never in an order the subjects shape.
            order = SubjectOrder.of(ranks, _shuffle(n, self._random.uniform))
            x_batch, y_batch = order.gather(x_batch), order.gather(y_batch)
            batch = SubjectBatch(order.gather(np.arange(n)), order.numbers, np.ones(n, bool))
        losses, outputs = self._update(x_batch, y_batch, sigma, clip, float(n), batch)
        if order is not None:  # back in the caller's row order
            losses, outputs = _scatter(order, losses), _scatter(order, outputs)
        preds = self.objective.probabilities(outputs).detach().cpu().numpy()
        metrics = RowMetrics(losses.detach().double().cpu().numpy(), None, self.spec.loss_bound)
        return StepResult(metrics, preds)

    # Evaluation --------------------------------------------------------------------

    def _evaluate(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> RowMetrics:
        self.module.eval()
        losses = [torch.zeros(0, device=self.device)]
        correct = [] if self.objective.kind == "mse" else [torch.zeros(0, device=self.device)]
        with torch.no_grad():
            for start in range(0, len(rows), self._eval_rows):
                idx = rows[start : start + self._eval_rows]
                xb, x_ok = input_tensor(x[idx], self.device)
                yb, y_ok = target_tensor(self.objective, self.spec, y[idx], self.device)
                valid = x_ok & y_ok
                out = self.module(xb, logits=True)
                losses.append(_unfit(self.objective.per_example(out, yb), valid))
                hits = self.objective.correct(self.objective.probabilities(out), yb)
                if hits is not None:
                    correct.append(torch.where(valid, hits, 0.0))
        return RowMetrics(
            losses=torch.cat(losses).double().cpu().numpy(),
            correct=torch.cat(correct).double().cpu().numpy() if correct else None,
            loss_bound=self.spec.loss_bound,
        )

    def evaluate_rows(
        self, x: np.ndarray, y: np.ndarray, *, rows: np.ndarray | None = None
    ) -> RowMetrics:
        """Raw per-row losses and accuracy of the model on `rows` of x, y (all rows by
        default). Rows that do not fit get a non-finite loss and 0 accuracy."""
        check_shapes(self.spec, x, y)
        n = int(x.shape[0])
        chosen = np.arange(n) if rows is None else check_rows("rows", rows, n)
        if chosen.size == 0:
            raise ValidationError("Expected at least one row to evaluate. Received: none")
        return self._evaluate(x, y, chosen)

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, *, rows: np.ndarray | None = None
    ) -> tuple[float, float | None, int]:
        """(mean loss clipped to [0, loss_bound], accuracy or None for MSE, rows used). Raw."""
        metrics = self.evaluate_rows(x, y, rows=rows)
        return metrics.loss, metrics.accuracy, metrics.n

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """The model's output (probabilities when it ends in Sigmoid/Softmax), float32."""
        check_shapes(self.spec, x)
        batch_size = _positive_int("batch_size", batch_size)
        self.module.eval()
        out_shape = tuple(int(d) for d in self.spec.output_shape[1:])  # type: ignore[arg-type]
        parts = [np.zeros((0, *out_shape), dtype=np.float32)]
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb, x_ok = input_tensor(x[start : start + batch_size], self.device)
                parts.append(_unfit(self.module(xb), x_ok).cpu().numpy())
        return np.concatenate(parts)

    # Weights and checkpoints ---------------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """Trainable parameters as float32 arrays, named `<layer index>.weight`/`.bias`."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self.module.named_parameters()}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the parameters; names, shapes, dtype (float32) and finiteness checked."""
        if not isinstance(weights, Mapping):
            raise ValidationError(
                f"set_weights expects a dict of arrays. Received: {type(weights).__name__}"
            )
        missing = sorted(set(self._names) - set(weights))
        unexpected = sorted(set(map(str, weights)) - set(self._names))
        if missing or unexpected:
            raise ValidationError(
                f"set_weights expects the names {self._names}. Received: missing {missing}, "
                f"unexpected {unexpected}",
                expected=self._names,
                missing=missing,
                unexpected=unexpected,
            )
        params = dict(self.module.named_parameters())
        for name in self._names:
            value, expected = weights[name], tuple(params[name].shape)
            if not isinstance(value, np.ndarray):
                raise ValidationError(
                    f"set_weights expects {name!r} as a numpy array. "
                    f"Received: {type(value).__name__}"
                )
            if value.shape != expected or value.dtype != np.float32:
                raise ValidationError(
                    f"set_weights expects {name!r} of shape {expected} and dtype float32. "
                    f"Received: shape {value.shape}, dtype {value.dtype}",
                    name=name,
                    expected=list(expected),
                    received=list(value.shape),
                )
            if not np.isfinite(value).all():
                raise ValidationError(
                    f"set_weights expects finite values in {name!r}. Received: NaN or infinity"
                )
        with torch.no_grad():
            for name in self._names:
                params[name].copy_(torch.as_tensor(weights[name]))

    def to_torch(self) -> torch.nn.Module:
        """A copy of the module on the CPU in eval mode; `forward(x)` gives probabilities."""
        return copy.deepcopy(self.module).cpu().eval()

    def checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, meta): weights, optimizer state and random-generator states as flat
        named CPU tensors (safetensors-ready), the rest as a JSON-able dict. No pickle.
        A secure trainer's noise and sampling stream is not in it: it is never saved."""
        tensors = {
            f"param.{name}": p.detach().cpu().clone().contiguous()
            for name, p in self.module.named_parameters()
        }
        optim_tensors, optim_meta = optimizer_state(self.optimizer, self._names)
        tensors.update(optim_tensors)
        tensors["rng.dropout"] = self._dropout.get_state()
        random_tensors, random_meta = self._random.state()
        tensors.update(random_tensors)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "spec": self.spec.to_dict(),
            "steps_done": self.steps_done,
            "optimizer": optim_meta,
            **random_meta,
        }
        return tensors, meta

    def load_checkpoint(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Resume exactly from `checkpoint()`; keys, shapes and the spec are checked."""
        if not isinstance(meta, Mapping) or meta.get("format") != CHECKPOINT_FORMAT:
            raise ValidationError(
                f"Expected a checkpoint of format {CHECKPOINT_FORMAT}. "
                f"Received: {meta.get('format') if isinstance(meta, Mapping) else meta!r}"
            )
        if meta.get("spec") != self.spec.to_dict():
            raise ValidationError("This checkpoint belongs to a different model spec")
        expected = {f"param.{n}" for n in self._names} | {"rng.dropout"}
        missing = sorted(expected - set(tensors))
        unknown = sorted(
            k for k in tensors if k not in expected | {"rng.noise"} and not k.startswith("optim.")
        )
        if missing or unknown:
            raise ValidationError(
                f"Checkpoint tensors do not fit this trainer. Received: "
                f"missing {missing}, unknown {unknown}"
            )
        params = dict(self.module.named_parameters())
        for name in self._names:
            value = tensors[f"param.{name}"]
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValidationError(
                    f"Checkpoint {name!r} has shape {tuple(value.shape)}; "
                    f"expected {tuple(params[name].shape)}"
                )
        with torch.no_grad():
            for name in self._names:
                params[name].copy_(tensors[f"param.{name}"])
        optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        restore_optimizer_state(self.optimizer, self._names, optim, meta.get("optimizer", {}))
        try:
            self._dropout.set_state(tensors["rng.dropout"])
            self._random.load_state(dict(tensors), dict(meta))
        except RuntimeError:  # a generator's state saved on another kind of device
            if not self.secure:
                raise ValidationError(
                    f"This checkpoint's random-generator states were saved on another kind "
                    f"of device: a seeded run repeats only on the device it started on. "
                    f"Received: a checkpoint for a trainer on {self.device.type}"
                ) from None
            self._dropout.manual_seed(secrets.randbits(63))  # dropout masks need no replay
        self.steps_done = int(meta.get("steps_done", 0))


def _chunk_rows(spec: ModelSpec, device: torch.device) -> tuple[int, int]:
    """(rows per piece of a step, rows per piece of an evaluation): a step's piece bounds
    its per-example gradients and, on the CPU, its layers' outputs, an evaluation's its
    outputs. A GPU takes whole batches: its caching allocator keeps no glibc arenas, and
    smaller pieces would multiply the kernel launches that bound its steps."""
    shapes = (spec.input_shape, *spec.shapes)
    floats = sum(math.prod(int(d) for d in shape[1:]) for shape in shapes)  # type: ignore[arg-type]
    by_outputs = max(1, _ACTIVATION_BYTES // (4 * floats))
    if device.type != "cpu":
        by_outputs = _EVAL_BATCH
    step = min(_GRAD_ELEMENTS // spec.param_count, by_outputs)
    return max(1, step), min(_EVAL_BATCH, by_outputs)


def _scatter(order: SubjectOrder, tensor: torch.Tensor) -> torch.Tensor:
    """`order.scatter` for a tensor: rows in subject order back to the caller's order."""
    by_key = torch.as_tensor(order.by_key, device=tensor.device)
    shuffled = torch.as_tensor(order.shuffled, device=tensor.device)
    in_shuffled = torch.empty_like(tensor)
    in_shuffled[by_key] = tensor
    out = torch.empty_like(tensor)
    out[shuffled] = in_shuffled
    return out


def _shuffle(n: int, uniform: Callable[[int], np.ndarray]) -> np.ndarray:
    """A random permutation of n positions, from the trainer's (secure) stream."""
    return np.argsort(uniform(n))


def _start_step(value: object, total: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValidationError(f"Expected start_step of an int. Received: start_step={value!r}")
    if not 0 <= value <= total:
        raise ValidationError(
            f"Expected start_step in [0, {total}] (the steps of this fit). "
            f"Received: start_step={value}"
        )
    return int(value)


def _unfit(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`values` with the rows that did not fit replaced by NaN (same work for every row)."""
    shape = (-1, *([1] * (values.ndim - 1)))
    return torch.where(valid.reshape(shape), values, torch.nan)

"""SSVI: Pyro's SVI with a sparse guide whose support changes every ΔT steps (SSVI Algorithm 1)."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Dict, List, Optional, Set, Union

import pyro.optim
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.abstract_infer import TracePosterior
from pyro.infer.elbo import ELBO
from pyro.infer.util import zero_grads
from torch import Tensor

from . import estimators, params
from .criteria import get_removal_criterion
from .distributed import DistributedSync, resolve_distributed
from .errors import SSVIConfigError
from .finite import FiniteLosses, non_finite_error
from .handlers import DrawNeeded, LRTMessenger, MaskPriorMessenger, ScaleLatentsMessenger, SkipDrawsMessenger
from .handlers.fused import FusedTraces
from .leaves import BackwardLeaves, untrained_message
from .schedule import PAPER_RECIPE, SurgerySchedule, kl_weight
from .surgery import optimizer_state_lookup
from .surgery_step import AdditionScorer, apply_surgery
from .variant import VariantLike, resolve_variant
from .wiring import sparse_part, trained_tensors, unused_optim_state, with_point_estimates

__all__ = ["PAPER_RECIPE", "SSVI"]


_NO_CONTEXT = contextlib.nullcontext()  # reusable: enters and exits doing nothing


class SSVI(SVI):
    """Stochastic variational inference on a sparse subspace that changes during training.

    ``step(*args)`` computes the objective (SSVI eq. 3)::

        loss = [ -E_q log p(y | theta) + beta_t * KL(q || p) ] / num_data

    (KL over active entries only, whatever the model's priors; the ``/ num_data`` only when
    ``num_data`` is given) with ``loss``'s estimator (``Trace_ELBO``: Monte Carlo KL;
    ``TraceMeanField_ELBO``: closed form; their JIT forms), takes an optimizer step and returns
    the loss as a float, like :meth:`pyro.infer.SVI.step`. With the default schedule keywords
    this is the true ELBO (beta = 1), as ``pyro.infer.SVI`` optimises; the paper's tempered
    recipe is :data:`PAPER_RECIPE`. Every ``update_interval`` steps until ``update_end``, instead
    of an optimizer step it runs the model at sampled weights, ranks them, and moves ``r_t`` of
    each sparse site's active entries elsewhere (see :mod:`pyro_ssvi.surgery`). Without
    ``num_steps`` the drop fraction stays at ``drop_fraction`` and updates never stop, unless
    ``update_end`` is a step count. :meth:`step_async` is the same step without a host
    synchronization (for GPUs); :meth:`state_dict` / :meth:`load_state_dict` carry the schedule
    position for checkpoints.

    Parameters trained: with a ``pyro.optim`` optimizer, everything Pyro sees (the guide's, our
    models' point estimates, ``pyro.param`` / ``pyro.module`` / ``PyroModule`` parameters) plus the
    parameters of a model that is an ``nn.Module``; with a torch optimizer, what it holds. The
    first step checks that every tensor the loss depends on is trained, and raises otherwise.

    :param model: any Pyro model, e.g. from :mod:`pyro_ssvi.models`.
    :param guide: a :class:`~pyro_ssvi.guides.MaskedAutoNormal` of the model, or an
        ``AutoGuideList`` holding exactly one.
    :param optim: a ``pyro.optim.PyroOptim`` (e.g. ``pyro.optim.Adam({...})``) or a
        ``torch.optim.Optimizer`` built over ``guide.parameters()`` and the model's parameters
        (set the guide up first with ``guide(*args)``); the latter steps all tensors at once.
    :param loss: a Pyro ELBO (``Trace_ELBO()``, ``TraceMeanField_ELBO()`` or a JIT form).
    :param num_steps: total number of steps (for the cosine drop fraction and the KL warm-up).
    :param update_interval: ΔT in steps. :param drop_fraction: α.
    :param update_end: fraction of ``num_steps`` (float) or step (int) after which masks stay.
    :param removal: removal criterion name (:data:`pyro_ssvi.criteria.REMOVAL_CRITERIA`).
    :param removal_lambda: λ of ``mean_exp_abs`` / ``snr_exp_abs`` (eq. 8; default 1).
    :param addition: ``"grad"`` (|dL/dtheta| at one draw), ``"grad_mean"`` (at theta = E_q theta,
        every latent at its mean), ``"grad_mc"`` (the paper: mean of |dL/dtheta| over
        ``addition_samples`` (theta, x) pairs) or ``"grad_mc_mean"`` (|mean dL/dtheta| over them);
        see :mod:`pyro_ssvi.surgery_step`.
    :param addition_samples: K of ``grad_mc`` / ``grad_mc_mean``.
    :param addition_window: ``"batch"`` (K draws on the update step's minibatch) or ``"recent"``
        (one draw on each of the K most recent minibatches; ``K <= update_interval``).
    :param sigma_init: sigma of regrown entries: ``"mean"`` (the site's mean active sigma) or a float.
    :param variant: implementation choices, ``"paper"`` or ``"authors"``, a
        :class:`~pyro_ssvi.variant.Variant` or a dict of its fields (see ``docs/fidelity.md``);
        None: the guide's ``variant`` (whose ``initial_active`` the guide has already applied, so
        any other variant given here must agree with it on that field).
    :param kl_max: final KL weight beta (1.0: the exact ELBO; the paper's code: 0.01).
    :param kl_warmup: fraction of ``num_steps`` over which beta rises linearly from 0 (0: none).
    :param num_data: data-set size N; if given the loss is divided by it (per-datapoint loss,
        so the paper's learning rates apply). The model's plate must already scale the
        minibatch likelihood to N.
    :param lrt: compute layers by local reparameterization on ordinary steps (layers that call
        :mod:`pyro_ssvi.ops`: pyro_ssvi's models, or see :func:`pyro_ssvi.nn.enable_lrt`).
    :param distributed: data-parallel training over ``torch.distributed``
        (:mod:`pyro_ssvi.distributed`): None (on when a process group of more than one rank is
        initialized), False, True or a :class:`~pyro_ssvi.distributed.DistributedSync`.
    """

    def __init__(
        self,
        model,
        guide,
        optim,
        loss: ELBO,
        *,
        num_steps: Optional[int] = None,
        update_interval: int = 100,
        drop_fraction: float = 0.3,
        update_end: Union[float, int] = 0.75,
        removal: str = "snr_abs",
        removal_lambda: Optional[float] = None,
        addition: str = "grad",
        addition_samples: int = 4,
        addition_window: str = "batch",
        sigma_init: Union[str, float] = "mean",
        kl_max: float = 1.0,
        kl_warmup: float = 0.0,
        num_data: Optional[int] = None,
        lrt: bool = True,
        variant: VariantLike = None,
        distributed: Union[None, bool, DistributedSync] = None,
    ) -> None:
        if not isinstance(loss, ELBO):
            raise SSVIConfigError(f"loss must be a Pyro ELBO such as Trace_ELBO(), got {type(loss).__name__}")
        estimators.check_supported(loss)
        if not isinstance(optim, (pyro.optim.PyroOptim, torch.optim.Optimizer)):
            raise SSVIConfigError(
                f"optim must be a pyro.optim optimizer (e.g. pyro.optim.SGD({{'lr': 0.01}})) or a "
                f"torch.optim.Optimizer, got {type(optim).__name__}"
            )
        sparse_guide = sparse_part(guide)
        if not (sigma_init == "mean" or (isinstance(sigma_init, (int, float)) and sigma_init > 0)):
            raise SSVIConfigError(f"sigma_init must be 'mean' or a positive float, got {sigma_init!r}")
        if not kl_max >= 0:
            raise SSVIConfigError(f"kl_max (the final KL weight beta) must be >= 0, got {kl_max!r}")
        if not 0 <= kl_warmup <= 1:
            raise SSVIConfigError(f"kl_warmup must be a fraction of num_steps in [0, 1], got {kl_warmup!r}")
        if num_data is not None and (not isinstance(num_data, int) or num_data < 1):
            raise SSVIConfigError(f"num_data must be a positive int (the data-set size) or None, got {num_data!r}")
        self.variant = resolve_variant(variant, getattr(sparse_guide, "variant", None))
        # SVI.__init__ insists on a PyroOptim; set up the same attributes without it.
        TracePosterior.__init__(self)
        self.model, self.guide, self.optim = model, guide, optim
        self.sparse_guide = sparse_guide
        self.elbo = loss
        self.num_samples = 0
        self.loss, self.loss_and_grads = loss.loss, loss.loss_and_grads
        lean = estimators.is_lean(loss)
        if lean:
            self.loss_and_grads = estimators.backward_mean_field_loss
        # Mask updates need the weights' dense gradients: never through a compiled function.
        twin = estimators.eager_twin(loss)
        self._surgery_loss_and_grads = estimators.backward_mean_field_loss if lean else twin.loss_and_grads
        self._torch_optim = isinstance(optim, torch.optim.Optimizer)
        # Pyro's ELBOs and pyro.optim find parameters through pyro.param statements; the lean loss
        # with a torch optimizer needs none, so pyro_ssvi's modules skip them (params.quiet).
        self._quiet = lean and self._torch_optim
        self.num_steps = num_steps
        self.schedule = SurgerySchedule(update_interval, drop_fraction, update_end, num_steps)
        self.removal = get_removal_criterion(removal, lam=removal_lambda)
        self._scorer = AdditionScorer(addition, addition_samples, addition_window, update_interval)
        self.addition, self.addition_samples = addition, self._scorer.samples
        self.sigma_init = sigma_init
        self.kl_max, self.kl_warmup = float(kl_max), float(kl_warmup)
        self.num_data = num_data
        self.use_lrt = lrt
        self.step_count = 0
        self.surgery_log: List[dict] = []
        self._state_lookup = optimizer_state_lookup(optim)
        self._coverage_checked = False
        self._optim_state_checked = False
        # Data parallel: gradients, scores and masks kept equal across ranks (None: one process).
        self.distributed = resolve_distributed(distributed)
        self._scorer.reduce = self.distributed.average_ if self.distributed else None

        # A plain nn.Module model announces its parameters (names for pyro.optim's state).
        model, self._model_store = with_point_estimates(model)
        # One messenger instance each, reused every step; model and guide run one after the other.
        # beta on the latents and 1/N on everything (the per-datapoint loss), in one messenger.
        self._beta = ScaleLatentsMessenger(1.0, scale=1.0 / num_data if num_data else 1.0)
        self._lrt = LRTMessenger(sparse_guide, self.variant.lrt_epsilon)
        self._model_sampled = self._beta(MaskPriorMessenger(sparse_guide)(model))
        # The lean loss never scores a weight under its prior (closed-form KLs over the active
        # entries, whatever the prior's class): no prior masking needed on its hot path.
        self._model_lrt = self._beta(self._lrt(model) if lean else MaskPriorMessenger(sparse_guide)(self._lrt(model)))
        self._guide = self._beta(guide)
        # Under LRT with a closed-form KL nothing should read a weight draw except the LRT ops,
        # which use q's moments: the draws are skipped, and a site whose stand-in gets used
        # anyway is drawn from then on (handlers.skip_draws). Part of state_dict().
        self._needs_draws: Set[str] = set()
        self._skip = SkipDrawsMessenger(sparse_guide, self._needs_draws) if (lean and lrt) else None
        self._guide_lrt = self._beta(self._skip(guide)) if self._skip else self._guide
        # A gradient step under LRT: (model, guide, loss_and_grads); on the lean path the same
        # traces come from one fused messenger per side (handlers.fused: fewer calls per site).
        self._lrt_step = (self._model_lrt, self._guide_lrt, self.loss_and_grads)
        if self._skip is not None:
            fused = FusedTraces(self._beta, self._lrt, self._skip)
            self._lrt_step = (model, guide, estimators.TracedMeanFieldLoss(fused))
        # step_async's losses: finite or not, recorded on the device and read later.
        self.finite = FiniteLosses()

    # ------------------------------------------------------------------ schedule
    def kl_weight(self, step: Optional[int] = None) -> float:
        """β at ``step`` (default: the next step)."""
        step = self.step_count if step is None else step
        return kl_weight(step, self.kl_max, self.kl_warmup, self.num_steps)

    def drop_fraction(self, step: Optional[int] = None) -> float:
        """r_t at ``step`` (default: the next step)."""
        return self.schedule.drop_fraction_at(self.step_count if step is None else step)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The schedule position and history, for checkpoints (parameters, masks and the
        optimizer have their own state dicts)."""
        return {
            "step_count": self.step_count,
            "surgery_log": list(self.surgery_log),
            "needs_draws": sorted(self._needs_draws),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (missing or malformed keys: SSVIConfigError)."""
        if not isinstance(state, dict) or "step_count" not in state or "surgery_log" not in state:
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise SSVIConfigError(
                f"SSVI.load_state_dict needs the dict of SSVI.state_dict() (keys step_count, surgery_log), got {found}"
            )
        self.step_count = int(state["step_count"])
        self.surgery_log = list(state["surgery_log"])
        # In place: the draw-skipping handler holds this set.
        if "needs_draws" in state:
            self._needs_draws.clear()
            self._needs_draws.update(state["needs_draws"])
        elif state.get("skipped_draws") is not None:  # written before draws were skipped per use
            self._needs_draws.clear()
            self._needs_draws.update(set(self.sparse_guide.sites) - set(state["skipped_draws"]))

    # ------------------------------------------------------------------ stepping
    def is_update_step(self, step: Optional[int] = None) -> bool:
        """Whether ``step`` (default: the next) updates masks instead of parameters."""
        step = self.step_count if step is None else step
        return self.schedule.is_update_step(step) and any(info.sparse for info in self.sparse_guide.sites.values())

    def step(self, *args, **kwargs) -> float:
        """One ELBO step (or a mask update every ΔT steps); returns the loss as a float.

        A non-finite loss raises :class:`~pyro_ssvi.errors.NonFiniteLossError` before any
        parameter or mask changes.
        """
        return self._step(args, kwargs, sync=True)

    def step_async(self, *args, **kwargs) -> Union[Tensor, float]:
        """:meth:`step` without waiting for the device: the loss comes back as a 0-dim tensor.

        Waiting for each loss (``step``'s float) stalls a GPU's queue while Python prepares the
        next step. Here finiteness is recorded on the device and checked at the next mask update
        (before any mask changes), at :meth:`check_finite` or at the next :meth:`step`; the
        parameter updates of the steps in between will have happened. With ``pyro.optim``
        optimizers or Pyro's own ELBO estimators (which synchronize anyway) this is ``step``.
        """
        return self._step(args, kwargs, sync=False)

    def check_finite(self) -> None:
        """Raise :class:`~pyro_ssvi.errors.NonFiniteLossError` if a loss of a :meth:`step_async`
        step since the last check was NaN or infinite (one device synchronization)."""
        self.finite.check(self.step_count)

    def _step(self, args, kwargs, sync: bool):
        t = self.step_count
        if self.distributed is not None:
            self.distributed.prepare(self.model, self.guide, args, kwargs)  # once: rank 0's state to all
            self.distributed.before_step(self.model)
        self._beta.beta = self.kl_weight(t)
        update = self.is_update_step(t)
        if sync and not update:  # an update step checks in its one read from the device
            self.check_finite()
        if update:
            loss = self._surgery_step(t, args, kwargs)
            estimators.reset_compiled(self.elbo)  # a JIT trace holds the old masks as constants
        else:
            loss = self._gradient_step(t, args, kwargs, sync)
        self.step_count += 1
        return loss

    def evaluate_loss(self, *args, **kwargs) -> float:
        """The loss at the current β without any update (no gradients)."""
        self._beta.beta = self.kl_weight()
        with torch.no_grad():
            model = self._model_lrt if self.use_lrt else self._model_sampled
            return float(self.loss(model, self._guide, *args, **kwargs))

    def _loss_with_draws(self, model, guide, args, kwargs, loss_and_grads=None):
        """``loss_and_grads``, re-run with a site drawn whenever its skipped draw was used (a
        skipped draw fails before any backward, so no gradient is doubled)."""
        loss_and_grads = loss_and_grads or self.loss_and_grads
        while True:
            try:
                return loss_and_grads(model, guide, *args, **kwargs)
            except DrawNeeded as exc:
                if exc.site in self._needs_draws:
                    raise
                self._needs_draws.add(exc.site)

    def _gradient_step(self, t: int, args, kwargs, sync: bool = True):
        model, guide, loss_and_grads = self._lrt_step if self.use_lrt else (self._model_sampled, self._guide, None)
        # addition_window="recent": this step's (theta, x) pair is one of the next update's K.
        record = self._scorer.records_at(t, self.is_update_step)
        if record:
            model, guide = self._model_sampled, self._scorer.guide(self._guide, self.sparse_guide)
            loss_and_grads = self._surgery_loss_and_grads
        watch = BackwardLeaves() if not self._coverage_checked else _NO_CONTEXT
        capture = None if self._torch_optim else poutine.trace(param_only=True)
        # Plain with-statements (an ExitStack costs ~20 Python calls a step).
        with params.quiet() if self._quiet else _NO_CONTEXT, capture or _NO_CONTEXT, watch:
            loss = self._loss_with_draws(model, guide, args, kwargs, loss_and_grads)
        if record:
            self._scorer.record()
        if self._torch_optim:
            trained = [p for group in self.optim.param_groups for p in group["params"]]
        else:
            loss = float(loss)
            trained = trained_tensors(capture.trace, self.guide, self.model)
        if not self._coverage_checked:
            self._check_coverage(watch.leaves, trained, args, kwargs)
        if self.distributed is not None:  # every rank then sees the same loss and gradients
            loss = self.distributed.average_gradients(trained, loss)
        if sync or not torch.is_tensor(loss):
            self._check_finite(loss, t, trained)
        else:  # recorded on the device; check_finite() looks at it
            self.finite.record(loss, t)
        if self._torch_optim:
            self.optim.step()
            self.optim.zero_grad()
            return float(loss) if sync else loss
        self.optim(trained)
        zero_grads(trained)
        if not self._optim_state_checked:
            self._check_optim_state_used()
        return loss

    def _check_coverage(self, leaves: Dict[int, Tensor], trained, args, kwargs) -> None:
        self._coverage_checked = True
        message = untrained_message(
            leaves, trained, self.model, (args, kwargs), self.guide.parameters(), self._torch_optim
        )
        if message is not None:
            zero_grads([t for t in leaves.values()])
            self._coverage_checked = False
            raise SSVIConfigError(message)

    def _check_optim_state_used(self) -> None:
        self._optim_state_checked = True
        message = unused_optim_state(self.optim)
        if message:
            warnings.warn(message, stacklevel=4)

    def _surgery_step(self, t: int, args, kwargs) -> float:
        """Loss and dense weight gradients at sampled (or mean) weights, then drop/grow; no
        optimizer step. The scores are :mod:`pyro_ssvi.surgery_step`'s."""
        guide = self._scorer.guide(self._guide, self.sparse_guide)
        losses = []
        # Distributed: the same weight draws on every rank, as one process would draw for the global batch.
        shared = self.distributed.shared_rng(t) if self.distributed else contextlib.nullcontext()
        with shared:
            for _ in range(self._scorer.draws_at_update):
                with poutine.trace(param_only=True) as capture:
                    losses.append(self._surgery_loss_and_grads(self._model_sampled, guide, *args, **kwargs))
                self._scorer.record()
                # No optimizer step follows: the parameters' gradients are not needed.
                zero_grads(trained_tensors(capture.trace, self.guide, self.model))
                if self._torch_optim:
                    self.optim.zero_grad()
        loss, earlier_finite = self.finite.read_with(losses)
        if self.distributed is not None:  # the global batch's loss: every rank decides alike below
            loss = self.distributed.average_value(loss)
        self.finite.settle(earlier_finite, self.step_count)
        if not math.isfinite(loss):
            self._scorer.take()  # discarded: they come from a non-finite loss
            raise non_finite_error(loss, t)
        self.apply_surgery(t, self._scorer.take())
        return loss

    def apply_surgery(self, t: int, addition_scores: Dict[str, Tensor]) -> dict:
        """Drop/grow every sparse site given its addition scores (site name -> score of the
        site's shape); appends the record to ``surgery_log`` and returns it."""
        reduce = self.distributed.average_ if self.distributed else None
        record = apply_surgery(
            self.sparse_guide, t, self.schedule, addition_scores, self.removal, self.sigma_init, self.variant,
            self._state_lookup, reduce_scores=reduce,
        )
        if self.distributed is not None:
            self.distributed.check_masks(self.sparse_guide, t)
        self.surgery_log.append(record)
        return record

    def _check_finite(self, loss, t: int, trained) -> None:
        if not math.isfinite(float(loss)):
            zero_grads(list(trained))
            if self._torch_optim:
                self.optim.zero_grad()
            raise non_finite_error(loss, t)


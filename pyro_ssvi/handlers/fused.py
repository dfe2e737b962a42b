"""SSVI's hot-path traces, each from one messenger instead of a stack of them.

A Pyro handler on the stack costs Python calls at every site of every step (``_process_message``,
``_postprocess_message`` and their method look-ups), and a GPU step of a Bayesian ResNet is
host-bound. SSVI's gradient step under local reparameterization traces

- the guide as ``poutine.trace(scale_latents(skip_draws(guide)))``, and
- the model as ``poutine.trace(poutine.replay(scale_latents(lrt(model)), trace=guide_trace))``:

three and four messengers. :class:`FusedGuideTrace` and :class:`FusedModelTrace` are a
``TraceMessenger`` each that applies the inner messengers' rules itself, in the order the stack
would (innermost first on the way in, outermost first on the way out), so the traces are the
same, site for site (tests/test_fused.py compares them).
"""

from __future__ import annotations

from typing import Tuple

from pyro.poutine import Trace
from pyro.poutine.trace_messenger import TraceMessenger

from .lrt import LRTMessenger
from .scale_latents import ScaleLatentsMessenger
from .skip_draws import SkipDrawsMessenger

__all__ = ["FusedGuideTrace", "FusedModelTrace", "FusedTraces"]

_NO_TRACE = Trace()  # FusedModelTrace's guide trace between runs (never written to)


class FusedGuideTrace(TraceMessenger):
    """``poutine.trace(scaler(skip(guide)))`` as one messenger."""

    def __init__(self, scaler: ScaleLatentsMessenger, skip: SkipDrawsMessenger) -> None:
        super().__init__()
        self.scaler, self.skip = scaler, skip

    def __enter__(self):
        self.scaler.refresh()
        return super().__enter__()

    def _pyro_sample(self, msg) -> None:
        self.skip._pyro_sample(msg)
        self.scaler._pyro_sample(msg)


class FusedModelTrace(TraceMessenger):
    """``poutine.trace(poutine.replay(scaler(lrt(model)), trace=guide_trace))`` as one messenger;
    set :attr:`guide_trace` before each run."""

    def __init__(self, scaler: ScaleLatentsMessenger, lrt: LRTMessenger) -> None:
        super().__init__()
        self.scaler, self.lrt = scaler, lrt
        self.guide_trace: Trace = _NO_TRACE

    def __enter__(self):
        self.scaler.refresh()
        self.lrt.begin_run()
        return super().__enter__()

    def __exit__(self, *args):
        self.lrt.end_run()
        return super().__exit__(*args)

    def _pyro_sample(self, msg) -> None:
        self.scaler._pyro_sample(msg)
        # poutine.replay's rule: a latent site the guide sampled takes the guide's value.
        guide_site = self.guide_trace.nodes.get(msg["name"])
        if guide_site is None or msg["is_observed"]:
            return
        if guide_site["type"] != "sample" or guide_site["is_observed"]:
            raise RuntimeError(f"site {msg['name']} must be sampled in trace")
        msg["done"] = True
        msg["value"] = guide_site["value"]
        msg["infer"] = guide_site["infer"]

    def _pyro_post_sample(self, msg) -> None:
        super()._pyro_post_sample(msg)  # the trace, outermost, records first
        self.lrt._pyro_post_sample(msg)

    def _pyro_ssvi_linear(self, msg) -> None:
        self.lrt._pyro_ssvi_linear(msg)

    def _pyro_ssvi_conv2d(self, msg) -> None:
        self.lrt._pyro_ssvi_conv2d(msg)


class FusedTraces:
    """``(model_trace, guide_trace) = traces(model, guide, *args, **kwargs)``: what
    :func:`~pyro_ssvi.objective.mean_field_loss` traces from the wrapped model and guide, from the
    plain ones with one fused messenger each. The messengers are SSVI's own (beta and 1/N,
    local reparameterization, skipped draws), shared with its unfused paths."""

    def __init__(self, scaler: ScaleLatentsMessenger, lrt: LRTMessenger, skip: SkipDrawsMessenger) -> None:
        self.guide_tracer = FusedGuideTrace(scaler, skip)
        self.model_tracer = FusedModelTrace(scaler, lrt)

    def __call__(self, model, guide, *args, **kwargs) -> Tuple[Trace, Trace]:
        guide_trace = _run(self.guide_tracer, guide, args, kwargs)
        self.model_tracer.guide_trace = guide_trace
        try:
            model_trace = _run(self.model_tracer, model, args, kwargs)
        finally:
            self.model_tracer.guide_trace = _NO_TRACE
        return model_trace, guide_trace


def _run(tracer: TraceMessenger, fn, args, kwargs) -> Trace:
    """``tracer(fn).get_trace(*args, **kwargs)``, without a copy, and without the tracer keeping
    the trace (a trace holds the step's autograd graph, which must not outlive the step)."""
    try:
        tracer(fn)(*args, **kwargs)
        return tracer.trace
    finally:
        tracer.trace = _NO_TRACE

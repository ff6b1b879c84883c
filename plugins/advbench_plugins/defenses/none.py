"""The undefended baseline: the pretrained model, unchanged and unconstrained."""

from __future__ import annotations

from advbench.interfaces import Context, Defense, ProtectedModel, PublisherData


class NoDefense(Defense):
    """No defense: the reference every mitigation power and legal impact is measured against."""

    def protect(self, model, publisher_data: PublisherData, ctx: Context) -> ProtectedModel:
        return ProtectedModel(model=model, constraints=[], info={"defense": "none"})

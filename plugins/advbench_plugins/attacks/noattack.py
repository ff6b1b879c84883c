"""The "no attack" reference: the protected model sampled as it is, without any adaptation.

Not an attacker: a row that says how recognisable each class is *before* anyone fine-tunes, through exactly the
same sampling and scoring path as the attacks (so "recognition before / after" in a leaderboard compares like
with like). Under a freeze mask it trivially complies, since it changes nothing.
"""

from __future__ import annotations

from advbench.interfaces import Attack, AttackData, Constraint, Context, ProtectedModel


class NoAttack(Attack):
    """Samples the protected model unchanged: the before-attack reference row."""

    def effective_constraints(self, protected: ProtectedModel, threat_model: str) -> list[Constraint]:
        # Changing nothing honours every constraint of every kind, so none can be refused.
        return [] if threat_model == "unconstrained" else list(protected.constraints)

    def adapt(self, protected: ProtectedModel, data: AttackData, ctx: Context):
        return protected.model.clone()

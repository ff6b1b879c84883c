"""`no-attack`: the before-attack reference changes nothing and complies with any constraint."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from advbench.interfaces import AttackData, Constraint, Context, FreezeMask, ProtectedModel
from advbench.plugins import get
from advbench.testing import tiny_dataset, tiny_model


@dataclass
class UnknownConstraint(Constraint):
    kind: ClassVar[str] = "something-new"


def test_returns_an_unchanged_copy_under_any_constraint(tmp_path):
    base = tiny_model()
    mask = FreezeMask({n: True for n, _ in base.unet.named_parameters()})
    protected = ProtectedModel(base, [mask, UnknownConstraint()])
    attack = get("attack", "no-attack")()
    assert attack.effective_constraints(protected, "compliant") == protected.constraints
    assert attack.effective_constraints(protected, "unconstrained") == []
    data = AttackData("class_0", tiny_dataset(n_classes=1, n_per_class=2).examples("class_0"), "illegal")
    out = attack.adapt(protected, data, Context(seed=0, progress=False, work_dir=tmp_path))
    assert out is not base
    for name, tensor in base.unet.state_dict().items():
        assert torch.equal(out.unet.state_dict()[name], tensor), name
    out.unet.conv_in.weight.data.add_(1.0)  # a copy: changing it leaves the protected model alone
    assert not torch.equal(out.unet.conv_in.weight, base.unet.conv_in.weight)

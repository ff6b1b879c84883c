"""`textual-inversion`: only the new token's embedding row changes; a UNet freeze mask cannot limit it."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from advbench.errors import ConstraintError, DataError, ParamError
from advbench.interfaces import AttackData, Constraint, Context, FreezeMask, ProtectedModel
from advbench.model import Model
from advbench.params import build_params
from advbench.testing import tiny_dataset, tiny_model
from advbench_plugins.attacks.textual_inversion import TextualInversion, placeholder_tokens


@pytest.fixture(scope="module")
def data():
    return AttackData("class_1", tiny_dataset(n_classes=2, n_per_class=4).examples("class_1"), "illegal")


def attack(**kw):
    a = TextualInversion(TextualInversion.Params(**{"steps": 3, "batch_size": 2, **kw}))
    a.name = "textual-inversion"
    return a


def ctx(tmp_path, threat="compliant"):
    return Context(seed=0, progress=False, threat_model=threat, work_dir=tmp_path)


def test_only_the_new_token_row_changes(tmp_path, data):
    base = tiny_model()
    adapted = attack().adapt(ProtectedModel(base), data, ctx(tmp_path))
    assert all(torch.equal(t, base.unet.state_dict()[n]) for n, t in adapted.unet.state_dict().items())
    token = placeholder_tokens("class_1", 1)[0]
    new_id = adapted.tokenizer.convert_tokens_to_ids(token)
    assert new_id == len(base.tokenizer) and len(adapted.tokenizer) == len(base.tokenizer) + 1
    old_text, new_text = base.text_encoder.state_dict(), adapted.text_encoder.state_dict()
    key = next(n for n in old_text if n.endswith("token_embedding.weight"))
    for name, tensor in new_text.items():
        if name != key:
            assert torch.equal(tensor, old_text[name]), name
    table = new_text[key]
    assert torch.equal(table[:new_id], old_text[key])  # every existing row is bit-identical
    init_ids = base.tokenizer("class_1", add_special_tokens=False).input_ids
    assert not torch.equal(table[new_id], old_text[key][init_ids].mean(0))  # the new row learned
    assert adapted.prompt_rewrites == {"class_1": token}
    assert adapted.rewrite_prompt("a photo of class_1") == f"a photo of {token}"


def test_adapted_model_round_trips_with_its_token(tmp_path, data):
    adapted = attack().adapt(ProtectedModel(tiny_model()), data, ctx(tmp_path))
    adapted.save(tmp_path / "model")
    back = Model.load(tmp_path / "model")
    prompt = [adapted.rewrite_prompt("a photo of class_1")]
    assert back.rewrite_prompt("a photo of class_1") == prompt[0]
    with torch.no_grad():
        torch.testing.assert_close(back.encode_prompts(prompt), adapted.encode_prompts(prompt))


def test_several_vectors(tmp_path, data):
    base = tiny_model()
    adapted = attack(num_vectors=2).adapt(ProtectedModel(base), data, ctx(tmp_path))
    tokens = placeholder_tokens("class_1", 2)
    assert adapted.prompt_rewrites["class_1"] == " ".join(tokens)
    assert len(adapted.tokenizer("x " + " ".join(tokens), add_special_tokens=False).input_ids) == 3


def test_a_unet_freeze_mask_cannot_limit_it(tmp_path, data):
    base = tiny_model()
    names = [n for n, _ in base.unet.named_parameters()]
    protected = ProtectedModel(base, [FreezeMask({n: True for n in names})])  # even everything frozen
    compliant = attack().adapt(protected, data, ctx(tmp_path / "c"))
    unconstrained = attack().adapt(protected, data, ctx(tmp_path / "u", "unconstrained"))
    assert compliant.fingerprint() == unconstrained.fingerprint()  # the same attack under both threat models
    assert all(torch.equal(t, base.unet.state_dict()[n]) for n, t in compliant.unet.state_dict().items())


@dataclass
class _Other(Constraint):
    kind: ClassVar[str] = "rate_limit"


def test_an_unknown_constraint_is_refused_when_compliant(tmp_path, data):
    with pytest.raises(ConstraintError, match="rate_limit"):
        attack().adapt(ProtectedModel(tiny_model(), [_Other()]), data, ctx(tmp_path))


def test_attacking_an_already_inverted_class_again_is_a_data_error(tmp_path, data):
    once = attack().adapt(ProtectedModel(tiny_model()), data, ctx(tmp_path))
    with pytest.raises(DataError, match="already"):
        attack().adapt(ProtectedModel(once), data, ctx(tmp_path))


def test_placeholder_tokens():
    assert placeholder_tokens("Varo Kellin", 3) == ["<varo-kellin>", "<varo-kellin>_1", "<varo-kellin>_2"]


@pytest.mark.parametrize("bad", [{"num_vectors": "0"}, {"lr": "-1"}, {"steps": "0"}])
def test_params_are_validated(bad):
    with pytest.raises(ParamError):
        build_params(TextualInversion.Params, bad, "attack 'textual-inversion'")

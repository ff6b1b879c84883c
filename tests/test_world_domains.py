"""The tiny world's plugins obey advbench's interfaces and register without importing torch."""

import subprocess
import sys

import pytest

from advbench import plugins
from advbench.cells import PluginSpec
from advbench.errors import ParamError
from advbench.interfaces import Dataset, DatasetSource, Domain, Metric
from advbench.sampling import SamplingConfig

METRICS = ("identity-distance", "identity-recognition", "style-distance", "style-recognition", "motif-score",
           "motif-recognition", "clip-score", "fid", "kid")


def test_registration_imports_no_torch():
    code = ("import sys; from advbench import plugins; "
            "[plugins.registry(k).names() for k in ('domain', 'metric', 'dataset')]; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("name", ["portraits", "artworks", "explicit"])
def test_domain_interface(name):
    domain = PluginSpec("domain", name, {"n_illegal": 1, "n_legal": 1, "images_per_class": 6}).build()
    assert isinstance(domain, Domain)
    assert domain.primary_metric in METRICS and set(domain.extra_metrics) <= set(METRICS)
    illegal, legal = domain.illegal_classes(), domain.legal_classes()
    assert len(illegal) == 1 and len(legal) == 1 and not set(illegal) & set(legal)
    data = domain.dataset()
    assert isinstance(data, Dataset) and data.classes() == illegal + legal
    ex = data.examples(illegal[0])
    assert len(ex) == 6 and ex[0].pixels().shape == (32, 32, 3) and illegal[0] in ex[0].text
    assert all(illegal[0] in p for p in domain.prompts(illegal[0]))
    SamplingConfig(**domain.sampling())  # valid keyword arguments
    assert domain.metric_params(domain.primary_metric) == {}
    # a real word the world model was pretrained on, as SD knows "person" (DreamBooth's class noun, UCE's guide)
    noun = {"portraits": "person", "artworks": "painting", "explicit": "figure"}[name]
    assert domain.class_noun(illegal[0]) == domain.class_noun(legal[0]) == noun


def test_domain_params_validated():
    with pytest.raises(ParamError, match="n_illegal"):
        PluginSpec("domain", "artworks", {"n_illegal": 9}).build()
    with pytest.raises(ParamError, match="images_per_class"):
        PluginSpec("domain", "portraits", {"images_per_class": 2}).build()
    all_portraits = PluginSpec("domain", "portraits", {"n_illegal": 15, "n_legal": 15}).build()
    assert len(all_portraits.illegal_classes() + all_portraits.legal_classes()) == 30


def test_dataset_source_and_metrics_are_plugins():
    src = PluginSpec("dataset", "world", {"domain": "explicit", "images_per_class": 3}).build()
    assert isinstance(src, DatasetSource)
    assert len(src.load().classes()) == 10
    for name in METRICS:
        cls = plugins.get("metric", name)
        assert issubclass(cls, Metric)
        assert isinstance(cls.higher_is_better, bool)
    assert plugins.get("metric", "clip-score").needs_prompts
    assert not plugins.get("metric", "identity-distance").higher_is_better


def test_world_command_is_attached():
    from click.testing import CliRunner

    from advbench.cli.main import _attach_commands, cli

    _attach_commands()
    result = CliRunner().invoke(cli, ["world", "--help"])
    assert result.exit_code == 0
    assert all(c in result.output for c in ("build", "check", "samples"))

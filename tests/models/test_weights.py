import os
import pickle

import pytest
import torch
from torch import nn
from torchvision.models import vgg16 as torchvision_vgg16

from attnvgg_export import models
from attnvgg_export.models.weights import torchvision_conv_indices


def _convs(model):
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """torchvision's VGG16 (random weights: none can be downloaded here), saved as its users do."""
    torch.manual_seed(1)
    reference = torchvision_vgg16(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "vgg16-397923af.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_vgg16_from_torchvision_state_dict_gives_torchvisions_output(torchvision_checkpoint):
    reference, path = torchvision_checkpoint
    model = models.create_model("vgg16")
    report = models.load_weights(model, path)
    assert report.layout == "torchvision" and report.fresh == ()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("variant", ["se", "la"])
def test_attention_variants_get_the_same_13_conv_weights(torchvision_checkpoint, variant):
    reference, path = torchvision_checkpoint
    model = models.create_model(variant)
    report = models.load_weights(model, path)
    assert report.fresh and all(k.count(".") > 2 for k in report.fresh)  # only block parameters
    ours = _convs(model)
    theirs = [reference.features[i] for i in torchvision_conv_indices()]
    assert len(ours) == len(theirs) == 13
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert torch.equal(model.classifier[6].weight, reference.classifier[6].weight)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_project_checkpoint_round_trip(tiny, tmp_path, suffix):
    source = tiny("se")
    path = models.save_checkpoint(source, tmp_path / f"se{suffix}", "se", 10, 0.125)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    target = tiny("se")
    report = models.load_weights(target, path)
    assert report.metadata["variant"] == "se"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_bare_state_dict_with_dataparallel_prefix_loads(tiny, tmp_path):
    source = tiny("la")
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "la.pth")
    target = tiny("la")
    models.load_weights(target, tmp_path / "la.pth")
    assert torch.equal(target.features[4].linear_query.weight,
                       source.features[4].linear_query.weight)


def test_published_linear_weights_load_into_pointwise_convs(tiny, tmp_path):
    source = tiny("la")
    state = {k: v.flatten(1) if v.dim() == 4 and v.shape[2:] == (1, 1) else v
             for k, v in source.state_dict().items()}
    assert state["features.4.linear_key.weight"].dim() == 2
    torch.save(state, tmp_path / "published.pth")
    target = tiny("la")
    models.load_weights(target, tmp_path / "published.pth")
    assert torch.equal(target.features[4].linear_key.weight, source.features[4].linear_key.weight)


def test_checkpoint_of_another_variant_is_refused_with_a_guess(tiny, tmp_path):
    torch.save(tiny("se").state_dict(), tmp_path / "se.pth")
    with pytest.raises(models.CheckpointError) as err:
        models.load_weights(tiny("la"), tmp_path / "se.pth")
    message = str(err.value)
    assert "se.pth" in message and "missing" in message and "unexpected" in message
    assert "seems to be for variant 'se'" in message
    assert "model is variant 'la' or 'sa'" in message


def test_metadata_variant_must_match(tiny, tmp_path):
    path = models.save_checkpoint(tiny("la"), tmp_path / "la.pt", "la", 10, 0.125)
    with pytest.raises(models.CheckpointError, match="made for variant 'la', not 'sa'"):
        models.load_weights(tiny("sa"), path)


def test_other_num_classes_needs_reset_head(tiny, tmp_path):
    source = tiny("se", num_classes=10)
    path = models.save_checkpoint(source, tmp_path / "se.pt", "se", 10, 0.125)
    target = tiny("se", num_classes=3)
    with pytest.raises(models.CheckpointError, match="10 classes, the model 3.*reset"):
        models.load_weights(target, path)
    head_before = target.classifier[6].weight.clone()
    report = models.load_weights(target, path, reset_head=True)
    assert set(report.fresh) == {"classifier.6.weight", "classifier.6.bias"}
    assert torch.equal(target.classifier[6].weight, head_before)
    assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_non_strict_load_allows_missing_keys(tiny, tmp_path):
    state = {k: v for k, v in tiny("se").state_dict().items() if "fc" not in k}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(models.CheckpointError, match="missing"):
        models.load_weights(tiny("se"), tmp_path / "partial.pth")
    report = models.load_weights(tiny("se"), tmp_path / "partial.pth", strict=False)
    assert len(report.fresh) == 10


def test_missing_checkpoint(tiny, tmp_path):
    with pytest.raises(models.CheckpointError, match=r"nope\.pt does not exist"):
        models.load_weights(tiny("se"), tmp_path / "nope.pt")


def test_unreadable_checkpoint(tiny, tmp_path, monkeypatch):
    path = models.save_checkpoint(tiny("se"), tmp_path / "se.pt", "se", 10, 0.125)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the permission check see what a user sees
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(path)
                            else real_access(p, m))
    with pytest.raises(models.CheckpointError, match="se.pt is not readable"):
        models.load_weights(tiny("se"), path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_checkpoint(tiny, tmp_path, suffix):
    path = models.save_checkpoint(tiny("se"), tmp_path / f"se{suffix}", "se", 10, 0.125)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(models.CheckpointError, match="truncated"):
        models.load_weights(tiny("se"), path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tiny, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": tiny("se").state_dict(), "hook": _Payload(marker)}, path)
    with pytest.raises(models.CheckpointError, match="refused.*Nothing in it was executed"):
        models.load_weights(tiny("se"), path)
    assert not marker.exists()
    with open(path, "rb") as f:  # the file really is malicious: plain pickle would run it
        assert b"system" in f.read()


def test_plain_pickle_without_tensors_is_refused(tiny, tmp_path):
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump({"not": "tensors"}, f)
    with pytest.raises(models.CheckpointError, match="(no state dict|refused|not a PyTorch)"):
        models.load_weights(tiny("se"), path)


@pytest.mark.parametrize(("content", "what"), [
    (b"epoch 12, loss 0.31\nsaved by train.py\n", "looks like text"),
    (b"\x00\x01\x02\x03binary", "looks like binary data"),
    (b"", "empty"),
])
def test_a_file_that_is_no_checkpoint_says_what_it_is(tiny, tmp_path, content, what):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(models.CheckpointError, match=f"weights.pt is .*{what}.*torch.save"):
        models.load_weights(tiny("se"), path)


@pytest.mark.parametrize(("written", "named"), [(".safetensors", ".pt"), (".pt", ".safetensors")])
def test_the_format_is_read_from_the_content_not_the_name(tiny, tmp_path, written, named):
    source = tiny("se")
    path = models.save_checkpoint(source, tmp_path / f"se{written}", "se", 10, 0.125)
    renamed = path.rename(tmp_path / f"weights{named}")
    target = tiny("se")
    models.load_weights(target, renamed)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                target.state_dict().values(), strict=True))


def test_lightning_and_compiled_prefixes_load(tiny, tmp_path):
    """A LightningModule's `model.` attribute, torch.compile's `_orig_mod.`, inside DDP's
    `module.`: every key carries them, so they are the wrapper's, not the model's names."""
    source = tiny("se")
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}},
               tmp_path / "lightning.ckpt")
    torch.save({f"module._orig_mod.{k}": v for k, v in source.state_dict().items()},
               tmp_path / "compiled.pt")
    for name in ("lightning.ckpt", "compiled.pt"):
        target = tiny("se")
        models.load_weights(target, tmp_path / name)
        assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_a_checkpoint_of_another_width_names_the_width_not_the_classes(tiny, tmp_path):
    path = models.save_checkpoint(tiny("se"), tmp_path / "se.pt", "se", 10, 0.125)
    wider = models.create_model("se", num_classes=10, width=0.25)
    with pytest.raises(models.CheckpointError) as err:
        models.load_weights(wider, path)
    message = str(err.value)
    assert "wrong shape" in message and "width 0.125" in message and "width 0.25" in message
    assert "WIDTH_MULT" in message and "10 classes, the model 10" not in message


def test_a_checkpoint_holding_nan_is_refused_naming_the_tensor(tiny, tmp_path):
    state = tiny("se").state_dict()
    state["features.2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    with pytest.raises(models.CheckpointError, match=r"diverged.pt holds NaN or infinite values in 1 "
                                                      r"tensors \(features.2.weight\)"):
        models.load_weights(tiny("se"), tmp_path / "diverged.pt")

"""The trainer with the project's model (mlpolar.model.MLPolar): reference energies go into
its ``reference_energy``, the final model is saved with ``save_model`` and evaluates the same as
the checkpoint."""
import pytest
import torch

from mlpolar.model import MLPolar, MLPolarConfig
from mlpolar.train.evaluate import load_for_evaluation
from mlpolar.train.predict import predict
from mlpolar.train.trainer import Trainer

SMALL = {"variant": "fast", "channels": 8, "layers": 1, "iterations": 1, "radial_basis": 4}


def _mm_path_available() -> bool:
    m = MLPolar(MLPolarConfig(elements=[1, 6], **SMALL)).double()
    h2 = torch.tensor([[0.0, 0.0, 0.0], [0.074, 0.0, 0.0]], dtype=torch.float64)
    try:
        m(torch.tensor([1, 1]), h2, torch.tensor([0.0]), torch.tensor([1]), None,
          torch.tensor([[0.5, 0.0, 0.0]], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    except RuntimeError as e:
        if "mm_features" in str(e):
            return False
        raise
    return True


@pytest.mark.skipif(not _mm_path_available(),
                    reason="MLPolar's MM embedding (issue 3 operator) is not wired in this build")
def test_train_mlpolar_and_evaluate_saved_model(make_config, tmp_path):
    cfg = make_config(epochs=1, batch_size=3)
    cfg["model"] = {"factory": "mlpolar.train.models:mlpolar", "kwargs": dict(SMALL)}
    t = Trainer(cfg)
    assert t.reference_in_model
    head = t.default_head
    torch.testing.assert_close(t.model.reference_energy[0].detach(),
                               torch.tensor(t.reference[head], dtype=torch.float64))
    t.train()
    t.finish(plots=False)
    saved = tmp_path / "run" / "model.pt"
    assert saved.exists()
    model, ref, h = load_for_evaluation(saved)
    assert ref is None and h == head
    c = t.data["val"][0]
    a = predict(model, c, head)
    b = predict(t.eval_model, c, head)
    torch.testing.assert_close(a["energy"], b["energy"])
    # the scripted graph may sum in another order than eager autograd (seen: 2e-7 relative)
    torch.testing.assert_close(a["qm_forces"], b["qm_forces"], rtol=1e-6, atol=1e-5)


@pytest.mark.skipif(not _mm_path_available(),
                    reason="MLPolar's MM embedding (issue 3 operator) is not wired in this build")
def test_init_from_a_model_file(make_config, tmp_path):
    """model.init may name a save_model file (a shipped model): the new run has the file's
    architecture, weights and energy zero, so it predicts what the file predicts before training."""
    from mlpolar.model import save_model
    torch.manual_seed(0)
    base = MLPolar(MLPolarConfig(elements=[1, 6], heads=["b3lyp-d3bj/def2-svp"], mm_cutoff=2.5,
                                 **SMALL)).double()
    with torch.no_grad():
        base.reference_energy[0] = torch.tensor([-1.6e3, -1.0e5], dtype=torch.float64)
    save_model(base, tmp_path / "base.pt")
    cfg = make_config(run="tuned", epochs=1, batch_size=3)
    cfg["model"] = {"init": str(tmp_path / "base.pt")}
    tuned = Trainer(cfg)
    assert tuned.model_spec["factory"] == "mlpolar.train.models:mlpolar"
    assert tuned.reference["b3lyp-d3bj/def2-svp"] == [-1.6e3, -1.0e5]
    c = tuned.data["val"][0]
    a = predict(base, c, "b3lyp-d3bj/def2-svp")
    b = predict(tuned.model, c, "b3lyp-d3bj/def2-svp")
    torch.testing.assert_close(a["energy"], b["energy"])
    torch.testing.assert_close(a["qm_forces"], b["qm_forces"])
    tuned.train()
    assert float(predict(tuned.eval_model, c, "b3lyp-d3bj/def2-svp")["energy"]) != float(a["energy"])


def test_init_names_a_shipped_model(make_config, tmp_path):
    """model.init: default resolves to the shipped model (not a path next to the config)."""
    from mlpolar.models import available, model_path
    from mlpolar.train.config import load_config
    cfg = make_config(run="tuned")
    cfg["model"] = {"init": "default"}
    assert load_config(cfg)["model"]["init"] == "default"
    if available():
        init = Trainer._read_init("default")
        assert init["model_spec"]["kwargs"]["elements"] == [1, 6]
        assert set(init["reference"]) == {"b3lyp-d3bj/def2-svp"}
        assert model_path("default").is_file()


def test_new_model_gets_an_mm_cutoff_that_covers_the_labels(make_config, store_path, tmp_path):
    """Without model.kwargs.mm_cutoff the trainer picks the cutoff that keeps every MM charge of
    every label at full weight; a cutoff given too short is refused before any work, naming the
    setting and the length that would do."""
    from mlpolar.train.dataset import check_mm_reach, load_store, mm_reach
    reach = max(mm_reach(c) for c in load_store(store_path))
    assert 1.3 < reach < 2.5          # whole residues within 1.2 nm of the ligand
    cfg = make_config(run="auto")
    cfg["model"] = {"factory": "mlpolar.train.models:mlpolar", "kwargs": dict(SMALL)}
    t = Trainer(cfg)
    cut = t.model_spec["kwargs"]["mm_cutoff"]
    assert t.model.mm_cutoff == cut
    assert reach + 0.1 + 0.05 <= cut < reach + 0.1 + 0.05 + 0.1 + 1e-9
    cfg = make_config(run="short")
    cfg["model"] = {"factory": "mlpolar.train.models:mlpolar",
                    "kwargs": {**SMALL, "mm_cutoff": 1.2}}
    with pytest.raises(ValueError, match=r"beyond the model's mm_cutoff - mm_switch_width = "
                                         r"1\.100 nm.*mm_cutoff >="):
        Trainer(cfg)
    assert not (tmp_path / "short" / "checkpoint.pt").exists()
    short = MLPolar(MLPolarConfig(elements=[1, 6], mm_cutoff=1.2, **SMALL))
    with pytest.warns(UserWarning, match="drops charges the label holds"):
        check_mm_reach(short, load_store(store_path, [0]), warn=True)


@pytest.mark.skipif(not _mm_path_available(),
                    reason="MLPolar's MM embedding (issue 3 operator) is not wired in this build")
def test_override_changes_the_mm_cutoff_of_an_init(make_config, tmp_path):
    """model.override sets a model.init's MM cutoff: the weights are the file's, the run records
    the new cutoff, and a cutoff that already covered every label changes no prediction."""
    from mlpolar.model import save_model
    torch.manual_seed(1)
    base = MLPolar(MLPolarConfig(elements=[1, 6], heads=["b3lyp-d3bj/def2-svp"], mm_cutoff=2.5,
                                 **SMALL)).double()
    save_model(base, tmp_path / "base.pt")
    cfg = make_config(run="tuned", epochs=1, batch_size=3)
    cfg["model"] = {"init": str(tmp_path / "base.pt"), "override": {"mm_cutoff": 3.0}}
    tuned = Trainer(cfg)
    assert tuned.model.mm_cutoff == 3.0
    assert tuned.model_spec["kwargs"]["mm_cutoff"] == 3.0
    for (k, a), (_, b) in zip(base.state_dict().items(), tuned.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    c = tuned.data["val"][0]
    torch.testing.assert_close(predict(tuned.model, c, "b3lyp-d3bj/def2-svp")["energy"],
                               predict(base, c, "b3lyp-d3bj/def2-svp")["energy"])
    tuned.train()
    ckpt = torch.load(tmp_path / "tuned" / "checkpoint.pt", weights_only=False)
    assert ckpt["model_spec"]["kwargs"]["mm_cutoff"] == 3.0


def test_bad_override_fails_before_work(make_config, tmp_path):
    from mlpolar.train.config import load_config
    cfg = make_config(run="bad")
    cfg["model"] = {"init": "default", "override": {"channels": 16}}
    with pytest.raises(ValueError, match=r"model.override.channels: only \['mm_cutoff'"):
        load_config(cfg)
    cfg["model"] = {"init": "default", "override": {"mm_cutoff": -1.0}}
    with pytest.raises(ValueError, match=r"model.override.mm_cutoff=-1.0 must be a positive"):
        load_config(cfg)
    cfg["model"] = {"factory": "mlpolar.train.models:mlpolar", "override": {"mm_cutoff": 3.0}}
    with pytest.raises(ValueError, match="without model.init put them in model.kwargs"):
        load_config(cfg)

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
    base = MLPolar(MLPolarConfig(elements=[1, 6], heads=["b3lyp-d3bj/def2-svp"], **SMALL)).double()
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

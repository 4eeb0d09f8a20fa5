"""The training loop on real labels with the tiny model: forces by autograd, loss decrease,
reference energies, exact resume from a checkpoint, rebuilding a model from a checkpoint."""
import csv

import numpy as np
import pytest
import torch

from mlpolar.train.dataset import load_store
from mlpolar.train.predict import predict
from mlpolar.train.trainer import Trainer, model_from_checkpoint
from tiny_model import TinyPolarModel


def test_predict_forces_are_minus_the_energy_gradient(store_path):
    """QM and MM forces of predict() against central finite differences (float64)."""
    torch.manual_seed(0)
    c = load_store(store_path, [1])[0]
    # a few MM charges keep the finite differences cheap; the physics is the same
    keep = torch.linalg.norm(c.mm_positions - c.positions.mean(0), dim=1).argsort()[:30]
    c.mm_positions, c.mm_charges = c.mm_positions[keep], c.mm_charges[keep]
    model = TinyPolarModel([1, 6], ["h"], hidden=8).double()
    p = predict(model, c, "h")
    h = 1e-5

    def energy(pos, mm):
        q = torch.tensor([0.0], dtype=torch.float64)
        return float(model(c.species, pos, q, torch.tensor([1]), None, mm, c.mm_charges,
                           None, None, "h")["energy"].detach())
    for (which, i, k) in [("qm", 0, 0), ("qm", 9, 2), ("mm", 0, 1), ("mm", 17, 0)]:
        pos, mm = c.positions.clone(), c.mm_positions.clone()
        x = pos if which == "qm" else mm
        x[i, k] += h
        ep = energy(pos, mm)
        x[i, k] -= 2 * h
        em = energy(pos, mm)
        fd = -(ep - em) / (2 * h)
        f = p["qm_forces" if which == "qm" else "mm_forces"][i, k]
        assert float(f) == pytest.approx(fd, rel=1e-6, abs=1e-6)
    # the dipole about the centroid of the QM positions, as the labels
    x = c.positions - c.positions.mean(0)
    torch.testing.assert_close(p["dipole"], (p["charges"][:, None] * x).sum(0))


def test_loss_decreases(make_config):
    cfg = make_config(epochs=4, batch_size=3, optimizer={"name": "adamw", "lr": 0.05})
    t = Trainer(cfg)
    before, _ = t.batch_loss(t.model, t.data["train"], create_graph=False)
    t.train()
    after, _ = t.batch_loss(t.model, t.data["train"], create_graph=False)
    assert float(after) < 0.97 * float(before)


def test_reference_energies_go_into_the_model(make_config):
    t = Trainer(make_config())
    assert t.reference_in_model
    head = t.default_head
    assert head == "b3lyp-d3bj/def2-svp"
    ref = torch.tensor(t.reference[head], dtype=torch.float64)
    torch.testing.assert_close(t.model.energy_ref[0], ref.to(t.model.energy_ref))
    # the fitted reference carries the mean of the training energies
    e = np.array([float(c.energy) for c in t.data["train"]])
    assert np.mean(e - (8 * ref[1].item() + 10 * ref[0].item())) == pytest.approx(0, abs=1e-6)


def _state(t):
    return {"model": t.model.state_dict(), "ema": t.ema.state_dict(),
            "opt": t.optimizer.state_dict()["state"], "sched": t.scheduler.state_dict(),
            "epoch": t.epoch, "best": t.best_val}


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def _log(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(f)]


def test_resume_equals_an_uninterrupted_run(make_config, tmp_path):
    full = Trainer(make_config(run="full", epochs=2))
    full.train()
    part = Trainer(make_config(run="part", epochs=2))
    part.train(stop_after=1)   # as if killed after the first epoch's checkpoint
    assert part.epoch == 1
    # a new process would build a fresh Trainer: same config, picks up checkpoint.pt
    resumed = Trainer(make_config(run="part", epochs=2))
    assert resumed.epoch == 1
    resumed.train()
    _assert_same(_state(full), _state(resumed))
    assert _log(tmp_path / "full" / "log.csv") == _log(tmp_path / "part" / "log.csv")
    assert len(_log(tmp_path / "part" / "log.csv")) == 2
    # the split is recorded and reused
    assert resumed.split == full.split


def test_checkpoint_rebuilds_the_model_and_finish_writes_metrics(make_config, tmp_path):
    t = Trainer(make_config(epochs=1, plots=True))
    t.train()
    m = t.finish()
    for part in ("val", "test", "test_file"):
        assert set(m[part]) >= {"energy_mae_kcal", "qm_force_mae_kcal_A", "mm_force_mae_kcal_A",
                                "interaction_mae_kcal", "baseline_interaction_mae_kcal",
                                "interaction_mae_ratio_to_baseline"}
    assert m["test_file"]["n_configurations"] == 2
    assert (tmp_path / "run" / "plots" / "test_file_parity_energy.png").exists()
    assert (tmp_path / "run" / "metrics.json").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    model, ref, head = model_from_checkpoint(ckpt)
    c = t.data["val"][0]
    a = predict(model, c, head, reference=None if ref is None else ref[head])
    b = predict(t.eval_model, c, head)
    torch.testing.assert_close(a["energy"], b["energy"])
    torch.testing.assert_close(a["mm_forces"], b["mm_forces"])


def test_bad_inputs_fail_before_work(make_config):
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            Trainer({**make_config(), "device": "cuda"})
    cfg = make_config()
    cfg["model"]["kwargs"]["heads"] = ["other"]
    with pytest.raises(ValueError, match="not heads of the model"):
        Trainer(cfg)
    cfg = make_config()
    cfg["data"]["split"] = {"train": 1.0, "val": 0.0}
    with pytest.raises(ValueError, match="validation"):
        Trainer(cfg)


def test_two_heads_each_with_its_reference(make_config):
    cfg = make_config(epochs=1, batch_size=4)
    cfg["data"]["train"] = [{"path": cfg["data"]["train"][0]["path"], "indices": "0:4", "head": "a"},
                            {"path": cfg["data"]["train"][0]["path"], "indices": "4:8", "head": "b"}]
    cfg["data"]["test"] = []
    cfg["data"]["split"] = {"train": 0.75, "val": 0.25}
    t = Trainer(cfg)
    assert t.model.heads == ["a", "b"]
    assert {c.head for c in t.data["train"]} == {"a", "b"}
    for k, h in enumerate(("a", "b")):
        e = np.array([float(c.energy) for c in t.data["train"] if c.head == h])
        ref = t.model.energy_ref[k]
        assert np.mean(e - (8 * ref[1].item() + 10 * ref[0].item())) == pytest.approx(0, abs=1e-6)
    assert not torch.equal(t.model.energy_ref[0], t.model.energy_ref[1])
    before = [p.detach().clone() for p in t.model.net[-1].parameters()]
    t.train()
    # both heads' output columns were trained
    w_before, w_after = before[0], t.model.net[-1].weight.detach()
    assert not torch.equal(w_before[0], w_after[0]) and not torch.equal(w_before[1], w_after[1])


def test_interaction_loss_trains_the_coupling(make_config):
    """The interaction term: (E_int(model) − (E − E_vacuum))/n squared, with its graph through
    both the embedded and the vacuum pass; it enters the loss only with a weight > 0 and the
    validation reports its MAE."""
    cfg = make_config(loss_weights={"energy": 0.0, "qm_forces": 0.0, "mm_forces": 0.0,
                                    "interaction": 1.0},
                      epochs=4, batch_size=3, optimizer={"name": "adamw", "lr": 0.05})
    t = Trainer(cfg)
    c = t.data["train"][0]
    p = predict(t.model, c, c.head, reference=t._ref(c.head), create_graph=True, interaction=True)
    want = ((p["interaction_energy"] - (c.energy - c.energy_vacuum)) / c.n_atoms) ** 2
    loss, parts = t.batch_loss(t.model, [c], create_graph=True)
    torch.testing.assert_close(loss, want)
    assert parts["interaction"] == pytest.approx(float(want))
    grads = torch.autograd.grad(loss, [q for q in t.model.parameters() if q.requires_grad], allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)
    before, _ = t.batch_loss(t.model, t.data["train"], create_graph=False)
    t.train()
    after, _ = t.batch_loss(t.model, t.data["train"], create_graph=False)
    assert float(after) < float(before)
    assert "interaction_mae_kcal" in t.validate()


def test_repeat_weights_a_store_in_training_only(make_config):
    """`repeat: k` puts a store's training configurations k times into each epoch; its
    validation and test configurations, and the split itself, stay as they were."""
    cfg = make_config()
    once = Trainer(cfg)
    cfg = make_config(run="rep")
    cfg["data"]["train"][0]["repeat"] = 3
    rep = Trainer(cfg)
    assert [s.get("test") for s in rep.split["stores"]] == [s.get("test") for s in once.split["stores"]]
    assert len(rep.data["train"]) == 3 * len(once.data["train"])
    assert len(rep.data["val"]) == len(once.data["val"]) and len(rep.data["test"]) == len(once.data["test"])
    assert [float(c.energy) for c in rep.data["train"]] == 3 * [float(c.energy) for c in once.data["train"]]
    for bad in (0, 1.5, True):
        cfg["data"]["train"][0]["repeat"] = bad
        with pytest.raises(ValueError, match="repeat="):
            Trainer(cfg)
    cfg["data"]["train"][0]["repeat"] = 1
    cfg["data"]["test"][0]["repeat"] = 2
    with pytest.raises(ValueError, match=r"unknown keys \['repeat'\]"):
        Trainer(cfg)


def test_init_starts_a_new_run_from_a_checkpoint(make_config, tmp_path, store_path):
    """model.init (fine-tuning): a new run starts from the checkpoint's EMA weights and energy
    reference with its own split of the (new) data; a resumed run ignores model.init."""
    base = Trainer(make_config(run="base", epochs=1))
    base.train()
    cfg = make_config(run="tuned", epochs=2)
    del cfg["model"]["kwargs"]
    cfg["model"]["init"] = str(tmp_path / "base" / "checkpoint.pt")
    cfg["data"]["train"][0]["indices"] = "0:8"          # more data than the base run saw
    tuned = Trainer(cfg)
    assert tuned.model_spec == base.model_spec and tuned.reference == base.reference
    c = load_store(store_path, [7])[0]
    head = base.default_head
    a = predict(base.eval_model, c, head)
    for m in (tuned.model, tuned.eval_model):
        b = predict(m, c, head)
        torch.testing.assert_close(a["energy"], b["energy"])
        torch.testing.assert_close(a["qm_forces"], b["qm_forces"])
    assert sum(len(s.get("train", [])) for s in tuned.split["stores"]) > \
        sum(len(s.get("train", [])) for s in base.split["stores"])
    tuned.train(stop_after=1)
    moved = predict(tuned.eval_model, c, head)["energy"]
    assert float(moved) != float(a["energy"])
    # resume: the run's own checkpoint, not model.init (which may be gone by then)
    (tmp_path / "base" / "checkpoint.pt").rename(tmp_path / "base" / "moved.pt")
    again = Trainer(cfg)
    assert again.epoch == 1
    torch.testing.assert_close(predict(again.eval_model, c, head)["energy"], moved)


def test_bad_init_fails_before_work(make_config, tmp_path, store_path):
    cfg = make_config(run="x")
    cfg["model"]["init"] = str(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="model.init and model.kwargs"):
        Trainer(cfg)
    del cfg["model"]["kwargs"]
    with pytest.raises(FileNotFoundError, match="model.init=.*does not exist"):
        Trainer(cfg)
    cfg["model"]["init"] = str(store_path)   # an HDF5 file, not a checkpoint
    with pytest.raises(ValueError, match="not a training checkpoint"):
        Trainer(cfg)
    assert not (tmp_path / "x").exists()

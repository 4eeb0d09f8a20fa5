"""Reading label stores, splits, batches, reference energies."""
import h5py
import numpy as np
import pytest
import torch

from mlpolar.train.config import load_config, select_indices
from mlpolar.train.dataset import batches, load_store, split_indices
from mlpolar.train.reference import fit_reference


def test_load_store_matches_the_file(store_path):
    cs = load_store(store_path, [2, 5], dtype=torch.float32, head="h")
    assert [c.index for c in cs] == [2, 5]
    with h5py.File(store_path, "r") as f:
        g = f["configs/00000005"]
        c = cs[1]
        assert c.head == "h" and c.positions.dtype == torch.float32
        assert c.species.tolist() == g["qm_atomic_numbers"][()].tolist()
        np.testing.assert_allclose(c.mm_positions.numpy(), g["mm_positions"][()], rtol=1e-6)
        np.testing.assert_allclose(c.mm_forces.numpy(), g["mm_forces"][()], rtol=1e-6)
        np.testing.assert_allclose(c.charges.numpy(), g["hirshfeld_charges"][()], rtol=1e-6)
        np.testing.assert_allclose(c.dipole.numpy(), g["dipole"][()], rtol=1e-6)
        assert float(c.energy_vacuum) == pytest.approx(g.attrs["energy_vacuum"], rel=1e-7)
        assert c.mm_charges.shape[0] == c.mm_forces.shape[0] == c.mm_positions.shape[0]
    assert c.total_charge == 0.0 and c.multiplicity == 1


def test_load_store_errors(store_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_store(tmp_path / "nope.h5")
    with pytest.raises(ValueError, match=r"\[99\] are not finished"):
        load_store(store_path, [0, 99])


def test_split_is_seeded_disjoint_and_complete():
    idx = list(range(20))
    a = split_indices(idx, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    b = split_indices(idx, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4)
    c = split_indices(idx, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=5)
    assert a == b and a != c
    assert [len(a[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(a["train"] + a["val"] + a["test"]) == idx
    # small sets still give every part with a positive fraction one configuration
    s = split_indices(range(5), {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(idx, {"train": 0.8, "val": 0.1}, seed=0)


def test_select_indices():
    done = [0, 1, 2, 3, 5, 8]
    assert select_indices(None, done) == done
    assert select_indices("1:6", done) == [1, 2, 3, 5]
    assert select_indices("0::2", done) == [0, 2, 8]
    assert select_indices([3, 1], done) == [1, 3]
    with pytest.raises(ValueError, match="start:stop"):
        select_indices("abc", done)


def test_batches_depend_only_on_the_seed():
    items = list(range(7))
    a = [list(b) for b in batches(items, 3, shuffle=True, seed=2)]
    assert a == [list(b) for b in batches(items, 3, shuffle=True, seed=2)]
    assert [len(b) for b in a] == [3, 3, 1] and sorted(sum(a, [])) == items
    assert [list(b) for b in batches(items, 3, shuffle=False)][0] == [0, 1, 2]
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(items, 0, shuffle=False))


def test_reference_fit_reproduces_the_mean_energy(store_path):
    cs = load_store(store_path)
    ref = fit_reference(cs, [1, 6, 8])
    pred = np.array([ref[0] * 10 + ref[1] * 8 for _ in cs])
    e = np.array([float(c.energy) for c in cs])
    assert np.mean(pred - e) == pytest.approx(0.0, abs=1e-6)
    assert ref[2] == 0.0   # oxygen absent: minimum-norm solution leaves it at zero
    with pytest.raises(ValueError, match="Z=6"):
        fit_reference(cs, [1, 8])


@pytest.mark.parametrize("patch, match", [
    ({"training": {"epochs": 0}}, "epochs"),
    ({"training": {"loss_weights": {"energy": 1, "force": 1}}}, "unknown config key training.loss_weights"),
    ({"training": {"optimizer": {"name": "lbfgs", "lr": 1}}}, "optimizer.name"),
    ({"data": {"train": []}}, "data.train is empty"),
    ({"data": {"train": [{"path": "x.h5"}], "split": {"train": 0.5, "val": 0.1}}}, "sum to 1"),
    ({"dtype": "float16"}, "dtype"),
    ({"bogus": 1}, "unknown config key"),
    ({"model": {"factory": "no_colon"}}, "module:callable"),
])
def test_config_errors(patch, match, tmp_path):
    cfg = {"run_dir": str(tmp_path), "data": {"train": [{"path": "x.h5"}]}}
    for k, v in patch.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and k in cfg else v
    with pytest.raises((ValueError, TypeError), match=match):
        load_config(cfg)
